-- hold_capture.lua: phase two, capture. The actual cost (<= the hold) becomes an in-flight
-- settlement item under the hold id; the rest of the hold returns to available.
--
-- KEYS[1] wallet hash   KEYS[2] holds hash   KEYS[3] hold_exp zset   KEYS[4] hold record
-- KEYS[5] in-flight hash   KEYS[6] event record of event id = hold id
-- ARGV[1] hold_id   ARGV[2] actual credits   ARGV[3] now_ms   ARGV[4] record_ttl_ms
--
-- Reply: hold_reply. Outcomes: 'captured'; 'expired' (now_ms >= expires_at: the hold is
-- resolved as expired instead, like a sweep); 'exceeds_hold' (actual > held, nothing changes);
-- 'exists' (already resolved: Python classifies); 'not_found'; 'event_id_conflict' (an event
-- with the hold's id is already known, nothing changes).
--
-- Hand-off: from here the captured usage is an ordinary authorised event with
-- event_id = hold_id (in-flight entry plus an 'authorized' event record), so the caller
-- produces it to usage.authorized, settlement posts and settles it, and a failed produce is
-- undone with release.lua, exactly as for a synchronous consume.

local k = {wallet = KEYS[1], holds = KEYS[2], hold_exp = KEYS[3], record = KEYS[4]}
local in_flight_key, event_record_key = KEYS[5], KEYS[6]
local hold_id, actual = ARGV[1], tonumber(ARGV[2])
local now_ms, record_ttl_ms = tonumber(ARGV[3]), ARGV[4]

local h = hold_record(k.record)
local w = wallet_state(k.wallet)
local function reply(outcome)
  return hold_reply(outcome, h, w.available, w.in_flight + w.held, 0,
    effective_status(w.status, w.available), 0)
end
if not h.state then
  return reply('not_found')
end
if h.state ~= 'held' then
  return reply('exists')
end
if now_ms >= h.expires_at then
  local _, err = finish_hold(k, hold_id, h, w, 'expired', 0, record_ttl_ms)
  if err then
    return redis.error_reply(err)
  end
  return reply('expired')
end
if actual > h.credits then
  return reply('exceeds_hold')
end
if redis.call('HEXISTS', in_flight_key, hold_id) == 1
    or redis.call('EXISTS', event_record_key) == 1 then
  return reply('event_id_conflict')
end

local _, err = finish_hold(k, hold_id, h, w, 'captured', actual, record_ttl_ms)
if err then
  return redis.error_reply(err)
end
w.in_flight = redis.call('HINCRBY', k.wallet, 'in_flight', int(actual))
redis.call('HSET', in_flight_key, hold_id, int(actual))
local status = effective_status(w.status, w.available)
redis.call('HSET', event_record_key, 'outcome', 'authorized', 'credits', int(actual),
  'member', h.member, 'available', int(w.available), 'reserved', int(w.in_flight + w.held),
  'status', status)
redis.call('PEXPIRE', event_record_key, record_ttl_ms)
return reply('captured')
