-- load_wallet.lua: (re)build a wallet's mirror from a ledger snapshot.
--
-- KEYS[1] wallet hash   KEYS[2] in-flight hash   KEYS[3] holds hash
-- ARGV[1] ledger_available   ARGV[2] status ('' keeps the mirror's)   ARGV[3] ledger_version
--
-- Reply: {outcome, available, in_flight, held, shortfall, drift, healed}; outcome is
-- 'loaded' or 'stale'.
--
-- Formula: available = ledger_available - sum(in-flight) - sum(holds), floored at 0. The
-- ledger has not seen in-flight events or holds yet (they post at settlement), so its
-- available still contains them. A negative result (the ledger lost credits, e.g. a refund,
-- while reservations were out) is floored and reported as `shortfall`: never a negative
-- balance. `drift` = previous mirror available - new available (> 0: the mirror was too
-- generous). The in_flight and held totals are recomputed from their maps (`healed` = 1 when
-- the cached totals disagreed).
--
-- Staleness: the snapshot must be at least as new as every ledger version the mirror has
-- already applied (settle/credit) or loaded; otherwise settled events would be missing from
-- both the ledger snapshot and the in-flight map and the load would over-state available.
-- A stale load changes nothing; the caller re-reads the ledger and retries.

local wallet_key, in_flight_key, holds_key = KEYS[1], KEYS[2], KEYS[3]
local ledger_available, status, version = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local w = wallet_state(wallet_key)
if w.loaded_version > version or w.applied_version > version then
  return {'stale', int(w.available), int(w.in_flight), int(w.held), 0, 0, 0}
end

local function total(key)
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', key)) do
    sum = sum + tonumber(v)
  end
  return sum
end
local in_flight, held = total(in_flight_key), total(holds_key)
local available = ledger_available - in_flight - held
local shortfall = 0
if available < 0 then
  shortfall, available = -available, 0
end
local drift, healed = 0, 0
if w.loaded then
  drift = w.available - available
  if in_flight ~= w.in_flight or held ~= w.held then
    healed = 1
  end
end
if status == '' then
  status = w.status
end
redis.call('HSET', wallet_key, 'loaded', '1', 'available', int(available),
  'in_flight', int(in_flight), 'held', int(held), 'status', status,
  'loaded_version', int(version))
return {'loaded', int(available), int(in_flight), int(held), int(shortfall), int(drift), healed}
