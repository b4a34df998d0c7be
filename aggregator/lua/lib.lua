-- lib.lua: helpers prepended to every script by aggregator/scripts.py (Redis runs Lua 5.1).
--
-- Conventions shared by all scripts:
--   * every key is passed in KEYS (computed in Python, all with the wallet's {hash tag});
--   * time comes from the caller (ARGV now_ms); the server clock is only used implicitly by
--     PEXPIRE, whose TTLs are garbage collection, never a correctness input;
--   * amounts are integers below 2^53, so Lua doubles hold them exactly; integers are written
--     back with string.format('%d') because tostring() would switch to exponent notation;
--   * a script validates everything before its first write: Redis does not roll a script back
--     when it raises half-way, so an error after a write would leave a torn state.

local function num(value)
  if value == false or value == nil then
    return 0
  end
  return tonumber(value)
end

local function int(value)
  return string.format('%d', value)
end

-- The wallet mirror hash. `status` is the account status from the ledger or an operator
-- (active | premium_paused | frozen); exhaustion is derived from `available`, never stored.
local function wallet_state(wallet_key)
  local f = redis.call('HMGET', wallet_key, 'loaded', 'available', 'in_flight', 'held', 'status',
    'loaded_version', 'applied_version')
  return {
    loaded = f[1] == '1',
    available = num(f[2]),
    in_flight = num(f[3]),
    held = num(f[4]),
    status = f[5] or 'active',
    loaded_version = tonumber(f[6] or '-1'),
    applied_version = tonumber(f[7] or '-1'),
  }
end

-- frozen beats everything; an empty wallet pauses premium features (SPEC §5 graceful
-- exhaustion) and resumes by itself as soon as credits come back, whatever route they take.
local function effective_status(status, available)
  if status == 'frozen' then
    return 'frozen'
  end
  if status == 'premium_paused' or available <= 0 then
    return 'premium_paused'
  end
  return 'active'
end

-- GCRA (generic cell rate algorithm): one key per limit holding the theoretical arrival time
-- (TAT) in microseconds. It admits a burst of `limit` and then one request per window/limit,
-- with an exact retry-after, in O(1) memory and without the 2x burst of fixed windows.
-- Microseconds keep the emission interval integral (ceil: never looser than configured) and
-- now_us stays below 2^53 until the year 2255.
-- Returns (new_tat_us or nil, retry_after_ms); nothing is written here: see gcra_store.
local function gcra_check(key, limit, window_ms, now_ms)
  if limit <= 0 then
    return nil, 0
  end
  local now_us = now_ms * 1000
  local interval_us = math.ceil(window_ms * 1000 / limit)
  local tolerance_us = interval_us * limit
  local tat = num(redis.call('GET', key))
  if tat < now_us then
    tat = now_us
  end
  local new_tat = tat + interval_us
  local excess_us = new_tat - now_us - tolerance_us
  if excess_us > 0 then
    return nil, math.ceil(excess_us / 1000)
  end
  return new_tat, 0
end

local function gcra_store(key, new_tat, now_ms)
  if new_tat then
    local ttl_ms = math.ceil((new_tat - now_ms * 1000) / 1000) + 1
    redis.call('SET', key, int(new_tat), 'PX', int(ttl_ms))
  end
end

-- The admission checks shared by authorize and hold_reserve, in their documented order.
-- `p` carries the parsed policy; returns (outcome or nil, retry_after_ms, admit) where admit
-- holds what commit_limits needs to record the admission.
local function admission(w, p, cap_key, wallet_rate_key, member_rate_key)
  if not w.loaded then
    return 'wallet_not_loaded', 0, nil
  end
  if w.status == 'frozen' then
    return 'wallet_frozen', 0, nil
  end
  local wallet_tat, wallet_retry = gcra_check(wallet_rate_key, p.wallet_rate_limit,
    p.wallet_rate_window_ms, p.now_ms)
  local member_tat, member_retry = gcra_check(member_rate_key, p.member_rate_limit,
    p.member_rate_window_ms, p.now_ms)
  local retry = math.max(wallet_retry, member_retry)
  if retry > 0 then
    return 'rate_limited', retry, nil
  end
  if p.cap_limit >= 0 and num(redis.call('GET', cap_key)) + p.cap_units > p.cap_limit then
    return 'daily_cap_reached', 0, nil
  end
  if p.credits > 0 then
    local paused = effective_status(w.status, w.available) == 'premium_paused'
    if p.tier == 'premium' and paused then
      return 'premium_paused', 0, nil
    end
    if p.credits > w.available then
      return 'insufficient_credits', 0, nil
    end
  end
  return nil, 0, {wallet_tat = wallet_tat, member_tat = member_tat}
end

-- Record an admitted operation against its daily cap and rate limits.
local function commit_limits(admit, p, cap_key, wallet_rate_key, member_rate_key)
  if p.cap_limit >= 0 then
    redis.call('INCRBY', cap_key, int(p.cap_units))
    redis.call('PEXPIRE', cap_key, int(p.cap_ttl_ms))
  end
  gcra_store(wallet_rate_key, admit.wallet_tat, p.now_ms)
  gcra_store(member_rate_key, admit.member_tat, p.now_ms)
end

-- The policy part of ARGV shared by authorize and hold_reserve, starting at ARGV[first].
local function parse_policy(first)
  return {
    credits = tonumber(ARGV[first]),
    tier = ARGV[first + 1],
    now_ms = tonumber(ARGV[first + 2]),
    cap_limit = tonumber(ARGV[first + 3]),
    cap_units = tonumber(ARGV[first + 4]),
    cap_ttl_ms = tonumber(ARGV[first + 5]),
    wallet_rate_limit = tonumber(ARGV[first + 6]),
    wallet_rate_window_ms = tonumber(ARGV[first + 7]),
    member_rate_limit = tonumber(ARGV[first + 8]),
    member_rate_window_ms = tonumber(ARGV[first + 9]),
  }
end
