-- settle.lua: the ledger has committed these events; drop their reservations.
--
-- KEYS[1] wallet hash   KEYS[2] in-flight hash   KEYS[2+i] event record of the i-th event
-- ARGV[1] ledger_version after the commit (-1: unknown)   ARGV[2] record_ttl_ms
-- ARGV[1+2i] the i-th event id   ARGV[2+2i] its credits as posted (-1: not given)
--
-- Reply: {outcome, settled_credits, available, reserved, shortfall, n_late, late ids...,
--         n_unknown, unknown ids..., n_recovered, recovered ids...}; outcome is 'settled' or
--         'wallet_not_loaded'.
--
-- Per event id:
--   * in flight: remove it, in_flight -= credits. If the mirror was loaded from a ledger
--     snapshot at or after this commit (loaded_version >= ledger_version), that load already
--     subtracted the event twice (ledger debit + in-flight), so its credits go back to
--     available;
--   * record says 'released' (produce looked failed, was undone, but the event reached the
--     ledger anyway): the ledger debited it, so available -= credits unless a later load
--     already reflected it; a deficit is reported as shortfall, never taken below zero;
--     the record becomes 'authorized' so the id is not authorised again;
--   * no record at all, credits given, and the mirror was loaded from a snapshot older than
--     this commit (ledger_version > loaded_version): the event was authorised before the
--     mirror was lost and rebuilt, so the rebuild counted its credits as still available.
--     It is 'recovered': available -= credits (floored, deficit reported as shortfall) and an
--     'authorized' record is written, so a replay is a no-op and the id is never authorised
--     again. Callers give credits only for events this very commit posted: a replayed
--     duplicate may have been posted long before the load, which then already reflected it;
--   * otherwise unknown: already settled (idempotent replay) or reflected by the last load.
--
-- On an unloaded wallet nothing is settled, but the version is recorded as applied, so a
-- ledger snapshot taken before this commit can no longer be loaded over it (load_wallet.lua):
-- the loader re-reads the ledger, which then holds these events.

local wallet_key, in_flight_key = KEYS[1], KEYS[2]
local version, record_ttl_ms = tonumber(ARGV[1]), ARGV[2]
local w = wallet_state(wallet_key)
if not w.loaded then
  if version > w.applied_version then
    redis.call('HSET', wallet_key, 'applied_version', int(version))
  end
  return {'wallet_not_loaded', 0, 0, 0, 0, 0, 0, 0}
end
local reflected_by_load = version >= 0 and w.loaded_version >= version

local settled, give_back, take = 0, 0, 0
local hits, late, unknown, recovered, seen = {}, {}, {}, {}, {}
for j = 1, (#ARGV - 2) / 2 do
  local event_id, given = ARGV[1 + 2 * j], tonumber(ARGV[2 + 2 * j])
  local credits = redis.call('HGET', in_flight_key, event_id)
  local rec = redis.call('HMGET', KEYS[2 + j], 'outcome', 'credits')
  if seen[event_id] then
    unknown[#unknown + 1] = event_id  -- a repeated id in one call is reported once, as a replay
  elseif credits then
    hits[#hits + 1] = event_id
    settled = settled + tonumber(credits)
  elseif rec[1] == 'released' then
    late[#late + 1] = j
    take = take + tonumber(rec[2])
  elseif not rec[1] and given >= 0 and version >= 0 and not reflected_by_load then
    recovered[#recovered + 1] = j
    take = take + given
  else
    unknown[#unknown + 1] = event_id
  end
  seen[event_id] = true
end
if settled > w.in_flight then
  return redis.error_reply('ERR mirror corrupted: in-flight entries exceed the in_flight total')
end
if reflected_by_load then
  give_back, take = settled, 0
end

for _, event_id in ipairs(hits) do
  redis.call('HDEL', in_flight_key, event_id)
end
for k, j in ipairs(late) do
  redis.call('HSET', KEYS[2 + j], 'outcome', 'authorized')
  late[k] = ARGV[1 + 2 * j]
end
for k, j in ipairs(recovered) do
  redis.call('HSET', KEYS[2 + j], 'outcome', 'authorized', 'credits', ARGV[2 + 2 * j])
  redis.call('PEXPIRE', KEYS[2 + j], record_ttl_ms)
  recovered[k] = ARGV[1 + 2 * j]
end

local available = w.available + give_back
local taken = math.min(take, available)
available = available - taken
redis.call('HSET', wallet_key, 'available', int(available), 'in_flight', int(w.in_flight - settled))
if version > w.applied_version then
  redis.call('HSET', wallet_key, 'applied_version', int(version))
end

local reply = {'settled', int(settled), int(available), int(w.in_flight - settled + w.held),
  int(take - taken)}
for _, ids in ipairs({late, unknown, recovered}) do
  reply[#reply + 1] = #ids
  for _, id in ipairs(ids) do
    reply[#reply + 1] = id
  end
end
return reply
