-- hold_lib.lua: helpers for the two-phase holds, prepended (after lib.lua) to hold_*.lua.
--
-- A hold lives in three places, all in the wallet's slot:
--   holds    hash  hold_id -> credits      (active holds; summed by load_wallet to heal `held`)
--   hold_exp zset  hold_id -> expires_at   (active holds by expiry)
--   hold:<id> hash state, credits, captured, released, expires_at, member
--             (the exactly-once record: 'held' until resolved as 'captured', 'released' or
--             'expired'; kept for the record TTL after resolution so late retries see it)

local function hold_record(record_key)
  local f = redis.call('HMGET', record_key, 'state', 'credits', 'captured', 'released',
    'expires_at', 'member')
  return {
    state = f[1],
    credits = num(f[2]),
    captured = num(f[3]),
    released = num(f[4]),
    expires_at = num(f[5]),
    member = f[6] or '',
  }
end

-- The reply shared by every hold script.
local function hold_reply(outcome, h, available, reserved, retry_after_ms, status, paused_now)
  return {outcome, h.state or '', int(h.credits), int(h.captured), int(h.released),
    int(h.expires_at), int(available), int(reserved), int(retry_after_ms), status, paused_now}
end

-- Resolve a held hold exactly once: `captured` credits leave the hold (the caller decides
-- where they go), the remainder returns to available. Returns the wallet state after.
local function finish_hold(k, hold_id, h, w, state, captured, record_ttl_ms)
  if h.credits > w.held then
    return nil, 'ERR mirror corrupted: hold exceeds the held total'
  end
  redis.call('HDEL', k.holds, hold_id)
  redis.call('ZREM', k.hold_exp, hold_id)
  local back = h.credits - captured
  w.available = redis.call('HINCRBY', k.wallet, 'available', int(back))
  w.held = redis.call('HINCRBY', k.wallet, 'held', int(-h.credits))
  redis.call('HSET', k.record, 'state', state, 'captured', int(captured), 'released', int(back))
  redis.call('PEXPIRE', k.record, record_ttl_ms)
  h.state, h.captured, h.released = state, captured, back
  return w, nil
end
