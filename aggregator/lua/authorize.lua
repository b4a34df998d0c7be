-- authorize.lua: the one atomic authorisation shared by the consume API/SDK and the aggregator.
--
-- KEYS[1] wallet hash        KEYS[2] in-flight hash (event_id -> credits)
-- KEYS[3] event record       KEYS[4] daily cap counter (placeholder when no cap)
-- KEYS[5] wallet rate key    KEYS[6] member rate key (placeholders when no limit)
-- ARGV[1] event_id  ARGV[2] member_id  ARGV[3] record_ttl_ms  ARGV[4..13] policy (lib.lua)
-- Optional, a request's idempotency claim (aggregator/claim.py; the consume API):
-- KEYS[7] its record (in this wallet's slot)  ARGV[14] the in-progress record  ARGV[15] ttl ms
--
-- Reply: {outcome, original_outcome, credits, member_id, available, reserved, retry_after_ms,
--         status, paused_now}, plus claim_taken (1/0) when a claim was given; {'claimed'} alone
--         when the claim's record already exists (nothing else was read or written).
--
-- Order: duplicate -> not loaded -> frozen -> rate limits -> daily cap -> premium pause ->
-- balance -> admit. Only an admission writes balances and counters. Final decisions (admitted
-- or refused for a business reason) are remembered for the record TTL so a redelivered event
-- gets the same answer; transient refusals (rate_limited, wallet_not_loaded) are not, so the
-- same event id may be retried after retry_after_ms or once the mirror is loaded.

local wallet_key, in_flight_key, record_key = KEYS[1], KEYS[2], KEYS[3]
local cap_key, wallet_rate_key, member_rate_key = KEYS[4], KEYS[5], KEYS[6]
local event_id, member_id, record_ttl_ms = ARGV[1], ARGV[2], ARGV[3]
local p = parse_policy(4)
local claim_key = KEYS[7]

local w = wallet_state(wallet_key)
-- The claim comes first, so whoever holds it is the one request that decides. A wallet not
-- loaded claims nothing: the caller loads it and asks again with the same claim.
local claim_taken = 0
if claim_key and w.loaded then
  if not redis.call('SET', claim_key, ARGV[14], 'NX', 'PX', ARGV[15]) then
    return {'claimed'}
  end
  claim_taken = 1
end
local function reply(r)
  if claim_key then
    r[10] = claim_taken
  end
  return r
end
local reserved = w.in_flight + w.held
local rec = redis.call('HMGET', record_key, 'outcome', 'credits', 'member', 'available',
  'reserved', 'status')
-- 'released' means the reservation was undone (release.lua): the id may be authorised again.
-- The fallbacks cover a record rebuilt by release/settle after its TTL ran out (no nil may
-- reach the reply: Lua would truncate the array there).
if rec[1] and rec[1] ~= 'released' then
  return reply({'duplicate', rec[1], rec[2], rec[3] or '', rec[4] or int(w.available),
    rec[5] or int(reserved), 0, rec[6] or effective_status(w.status, w.available), 0})
end

-- Defence in depth: an event still in flight is never reserved twice, even if its record
-- expired (settlement stalled past the record TTL).
local in_flight_credits = redis.call('HGET', in_flight_key, event_id)
if in_flight_credits then
  return reply({'duplicate', 'authorized', in_flight_credits, '', int(w.available),
    int(reserved), 0, effective_status(w.status, w.available), 0})
end

local function remember(outcome, available, reserved_now, status)
  redis.call('HSET', record_key, 'outcome', outcome, 'credits', int(p.credits),
    'member', member_id, 'available', int(available), 'reserved', int(reserved_now),
    'status', status)
  redis.call('PEXPIRE', record_key, record_ttl_ms)
end

local refusal, retry_after_ms, admit = admission(w, p, cap_key, wallet_rate_key,
  member_rate_key)
if refusal then
  local status = effective_status(w.status, w.available)
  if refusal ~= 'rate_limited' and refusal ~= 'wallet_not_loaded' then
    remember(refusal, w.available, reserved, status)
  elseif claim_taken == 1 then
    -- A transient refusal is not the request's answer: its retry must run anew.
    redis.call('DEL', claim_key)
    claim_taken = 0
  end
  return reply({refusal, '', int(p.credits), member_id, int(w.available), int(reserved),
    int(retry_after_ms), status, 0})
end

local available = redis.call('HINCRBY', wallet_key, 'available', int(-p.credits))
local in_flight = redis.call('HINCRBY', wallet_key, 'in_flight', int(p.credits))
redis.call('HSET', in_flight_key, event_id, int(p.credits))
commit_limits(admit, p, cap_key, wallet_rate_key, member_rate_key)
local status = effective_status(w.status, available)
remember('authorized', available, in_flight + w.held, status)
-- paused_now marks the flip itself (active -> premium_paused by exhaustion), so the caller
-- emits exactly one wallet event for it.
local paused_now = 0
if status == 'premium_paused' and effective_status(w.status, w.available) == 'active' then
  paused_now = 1
end
return reply({'authorized', '', int(p.credits), member_id, int(available),
  int(in_flight + w.held), 0, status, paused_now})
