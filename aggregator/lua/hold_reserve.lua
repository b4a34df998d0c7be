-- hold_reserve.lua: phase one of a two-phase hold (AI token pricing): available -> held.
--
-- KEYS[1] wallet hash   KEYS[2] holds hash   KEYS[3] hold_exp zset   KEYS[4] hold record
-- KEYS[5] daily cap counter   KEYS[6] wallet rate key   KEYS[7] member rate key
-- ARGV[1] hold_id  ARGV[2] member_id  ARGV[3] expires_at_ms  ARGV[4] record_ttl_ms
-- ARGV[5..14] policy (lib.lua: credits, tier, now_ms, cap and rate limits)
--
-- Reply: hold_reply (hold_lib.lua). Outcome 'held' on admission, 'exists' when the hold id
-- already has a record (Python tells a duplicate from a conflict or a resolved hold), or one
-- of authorize's refusals. A refused reservation writes nothing, so it may be retried with
-- the same hold id. The admission gates are authorize's (an AI request is capped and rate
-- limited when its hold is taken, not when it is captured).

local k = {wallet = KEYS[1], holds = KEYS[2], hold_exp = KEYS[3], record = KEYS[4]}
local hold_id, member_id = ARGV[1], ARGV[2]
local expires_at, record_ttl_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local p = parse_policy(5)

local h = hold_record(k.record)
local w = wallet_state(k.wallet)
local reserved = w.in_flight + w.held
if h.state then
  return hold_reply('exists', h, w.available, reserved, 0,
    effective_status(w.status, w.available), 0)
end

local refusal, retry_after_ms, admit = admission(w, p, KEYS[5], KEYS[6], KEYS[7])
if refusal then
  return hold_reply(refusal, h, w.available, reserved, retry_after_ms,
    effective_status(w.status, w.available), 0)
end

local available = redis.call('HINCRBY', k.wallet, 'available', int(-p.credits))
local held = redis.call('HINCRBY', k.wallet, 'held', int(p.credits))
redis.call('HSET', k.holds, hold_id, int(p.credits))
redis.call('ZADD', k.hold_exp, int(expires_at), hold_id)
redis.call('HSET', k.record, 'state', 'held', 'credits', int(p.credits), 'captured', '0',
  'released', '0', 'expires_at', int(expires_at), 'member', member_id)
-- The record outlives the hold's expiry by the record TTL, so a late retry of this
-- reservation still finds it (and is not taken again) whichever way the hold resolves.
redis.call('PEXPIRE', k.record, int(expires_at - p.now_ms + record_ttl_ms))
commit_limits(admit, p, KEYS[5], KEYS[6], KEYS[7])

local status = effective_status(w.status, available)
local paused_now = 0
if status == 'premium_paused' and effective_status(w.status, w.available) == 'active' then
  paused_now = 1
end
h = hold_record(k.record)
return hold_reply('held', h, available, w.in_flight + held, 0, status, paused_now)
