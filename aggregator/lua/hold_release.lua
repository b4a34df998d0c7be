-- hold_release.lua: void a hold (mode 'release') or expire it (mode 'expire', the sweeper).
--
-- KEYS[1] wallet hash   KEYS[2] holds hash   KEYS[3] hold_exp zset   KEYS[4] hold record
-- ARGV[1] hold_id   ARGV[2] now_ms   ARGV[3] record_ttl_ms   ARGV[4] mode
--
-- Reply: hold_reply. Outcomes:
--   'released'   mode release, the hold was held and not yet due: all of it back to available;
--   'expired'    the hold was due (now_ms >= expires_at): all of it back, resolved as expired;
--   'not_due'    mode expire, the hold is held and not yet due (a stale sweep index entry);
--   'exists'     already resolved (Python classifies duplicate / already resolved);
--   'not_found'  mode release, no such hold;
--   'tombstoned' mode expire, no such hold: an 'expired' record is written so a reservation
--                racing with the sweep can never create it afterwards. The sweeper only
--                expires index entries whose intended expiry has passed, so that hold would
--                have been born expired anyway.

local k = {wallet = KEYS[1], holds = KEYS[2], hold_exp = KEYS[3], record = KEYS[4]}
local hold_id, now_ms, record_ttl_ms, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]

local h = hold_record(k.record)
local w = wallet_state(k.wallet)
local function reply(outcome)
  return hold_reply(outcome, h, w.available, w.in_flight + w.held, 0,
    effective_status(w.status, w.available), 0)
end
if not h.state then
  if mode ~= 'expire' then
    return reply('not_found')
  end
  redis.call('HSET', k.record, 'state', 'expired', 'credits', '0', 'captured', '0',
    'released', '0', 'expires_at', int(now_ms))
  redis.call('PEXPIRE', k.record, record_ttl_ms)
  h = hold_record(k.record)
  return reply('tombstoned')
end
if h.state ~= 'held' then
  return reply('exists')
end

local state = 'released'
if now_ms >= h.expires_at then
  state = 'expired'
elseif mode == 'expire' then
  return reply('not_due')
end
local _, err = finish_hold(k, hold_id, h, w, state, 0, record_ttl_ms)
if err then
  return redis.error_reply(err)
end
return reply(state)
