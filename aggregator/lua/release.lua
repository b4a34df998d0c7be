-- release.lua: undo an authorisation whose produce to usage.authorized failed.
--
-- KEYS[1] wallet hash   KEYS[2] in-flight hash   KEYS[3] event record
-- ARGV[1] event_id   ARGV[2] record_ttl_ms
--
-- Reply: {outcome, credits, available, reserved}; outcome is 'released' or 'not_in_flight'.
--
-- Only an event still in flight can be released: its credits go back from reserved to
-- available and its record becomes 'released' (keeping the amount), which lets the producer
-- retry the same event id as a fresh authorisation, and lets settle.lua recognise an event
-- that reached the ledger after all (an ambiguous produce). A settled or unknown event is left
-- alone, so releasing twice, or after settlement, changes nothing.

local wallet_key, in_flight_key, record_key = KEYS[1], KEYS[2], KEYS[3]
local event_id, record_ttl_ms = ARGV[1], ARGV[2]
local w = wallet_state(wallet_key)
local credits = redis.call('HGET', in_flight_key, event_id)
if not credits then
  return {'not_in_flight', 0, int(w.available), int(w.in_flight + w.held)}
end
credits = tonumber(credits)
if credits > w.in_flight then
  return redis.error_reply('ERR mirror corrupted: in-flight entry exceeds the in_flight total')
end

redis.call('HDEL', in_flight_key, event_id)
local available = redis.call('HINCRBY', wallet_key, 'available', int(credits))
local in_flight = redis.call('HINCRBY', wallet_key, 'in_flight', int(-credits))
redis.call('HSET', record_key, 'outcome', 'released', 'credits', int(credits))
redis.call('PEXPIRE', record_key, record_ttl_ms)
return {'released', int(credits), int(available), int(in_flight + w.held)}
