-- settle.lua: the ledger has committed these events; drop their reservations.
--
-- KEYS[1] wallet hash   KEYS[2] in-flight hash   KEYS[2+i] event record of ARGV[1+i]
-- ARGV[1] ledger_version after the commit (-1: unknown)   ARGV[1+i] event ids
--
-- Reply: {outcome, settled_credits, available, reserved, shortfall, n_late, late ids...,
--         n_unknown, unknown ids...}; outcome is 'settled' or 'wallet_not_loaded'.
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
--   * otherwise unknown: already settled (idempotent replay) or lost with the mirror.

local wallet_key, in_flight_key = KEYS[1], KEYS[2]
local version = tonumber(ARGV[1])
local w = wallet_state(wallet_key)
if not w.loaded then
  return {'wallet_not_loaded', 0, 0, 0, 0, 0, 0}
end
local reflected_by_load = version >= 0 and w.loaded_version >= version

local settled, give_back, take = 0, 0, 0
local hits, late, unknown, seen = {}, {}, {}, {}
for i = 2, #ARGV do
  local event_id = ARGV[i]
  local credits = redis.call('HGET', in_flight_key, event_id)
  local rec = redis.call('HMGET', KEYS[i + 1], 'outcome', 'credits')
  if seen[event_id] then
    credits, rec = nil, {}  -- a repeated id in one batch is reported once, as a replay
  end
  seen[event_id] = true
  if credits then
    hits[#hits + 1] = event_id
    settled = settled + tonumber(credits)
  elseif rec[1] == 'released' then
    late[#late + 1] = i
    take = take + tonumber(rec[2])
  else
    unknown[#unknown + 1] = event_id
  end
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
for j, i in ipairs(late) do
  redis.call('HSET', KEYS[i + 1], 'outcome', 'authorized')
  late[j] = ARGV[i]
end

local available = w.available + give_back
local taken = math.min(take, available)
available = available - taken
redis.call('HSET', wallet_key, 'available', int(available), 'in_flight', int(w.in_flight - settled))
if version > w.applied_version then
  redis.call('HSET', wallet_key, 'applied_version', int(version))
end

local reply = {'settled', int(settled), int(available), int(w.in_flight - settled + w.held),
  int(take - taken), #late}
for _, id in ipairs(late) do
  reply[#reply + 1] = id
end
reply[#reply + 1] = #unknown
for _, id in ipairs(unknown) do
  reply[#reply + 1] = id
end
return reply
