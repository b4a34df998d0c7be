-- debit.lua: mirror a committed ledger posting that took credits out of available outside
-- usage (a purchase refund: purchased credits and the clawed-back bonus left the wallet).
--
-- KEYS[1] wallet hash   KEYS[2] debit record
-- ARGV[1] credits   ARGV[2] ledger_version after the posting (-1: unknown)
-- ARGV[3] record_ttl_ms
--
-- Reply: {outcome, available, reserved, shortfall}; outcomes as credit.lua's:
--   'debited'           available -= credits, floored at 0 (never negative);
--   'duplicate'         this idempotency id was already mirrored: nothing changes;
--   'already_reflected' the mirror was loaded from a ledger snapshot containing the posting;
--   'wallet_not_loaded' nothing to debit; the next load reads the ledger, which has it.
-- `shortfall` > 0: the mirror held fewer available credits than the ledger removed, because
-- reservations were out when the ledger posted (the ledger checked its own available, which
-- still contains in-flight reservations). Those reservations may fail to settle; the same
-- situation load_wallet.lua reports as its shortfall.
-- In every case but 'duplicate' the id is remembered and the version recorded as applied, so
-- an older ledger snapshot can no longer be loaded over it (load_wallet.lua).

local wallet_key, record_key = KEYS[1], KEYS[2]
local credits, version, record_ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local w = wallet_state(wallet_key)
local reserved = w.in_flight + w.held
if redis.call('EXISTS', record_key) == 1 then
  return {'duplicate', int(w.available), int(reserved), 0}
end
redis.call('SET', record_key, int(credits), 'PX', record_ttl_ms)
if version > w.applied_version then
  redis.call('HSET', wallet_key, 'applied_version', int(version))
end
if not w.loaded then
  return {'wallet_not_loaded', 0, 0, 0}
end
if version >= 0 and w.loaded_version >= version then
  return {'already_reflected', int(w.available), int(reserved), 0}
end
local taken = math.min(credits, w.available)
local available = w.available
if taken > 0 then
  available = redis.call('HINCRBY', wallet_key, 'available', int(-taken))
end
return {'debited', int(available), int(reserved), int(credits - taken)}
