-- set_status.lua: apply an account status change (operator freeze, fraud review pause,
-- reinstatement) to a loaded mirror at once, without touching balances.
--
-- KEYS[1] wallet hash   ARGV[1] status (active | premium_paused | frozen)
-- Reply: {outcome, effective_status}; outcome is 'updated' or 'wallet_not_loaded' (the next
-- load carries the ledger's status).

local w = wallet_state(KEYS[1])
if not w.loaded then
  return {'wallet_not_loaded', ''}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return {'updated', effective_status(ARGV[1], w.available)}
