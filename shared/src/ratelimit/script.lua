-- Aegis fleet-wide rate limit: one script, four operations, Redis's clock only.
--
-- KEYS[1] tat     next allowed request start, µs since the epoch (GCRA, τ = 0)
-- KEYS[2] leases  sorted set: lease id -> lease expiry, ms since the epoch
-- KEYS[3] pause   "start nothing before", µs since the epoch (set on 429/503)
-- All three share one hash tag, so the script also runs on Redis Cluster.
--
-- ARGV[1] is the operation:
--   acquire delay_us concurrency lease_ms lease_id max_ahead_us
--     -> {1, wait_us, 0, now_us}          granted: start in wait_us (0 = now); the
--                                         lease is held from now until start + lease_ms
--     -> {0, retry_after_us, why, now_us} denied; why: 1 paused, 2 concurrency
--                                         full, 3 the queue is over max_ahead_us long
--     (now_us, Redis's clock, lets callers map the start onto their own clock)
--   release lease_id             -> number of leases removed (0 or 1)
--   extend lease_id lease_ms     -> 1 if extended, 0 if the lease was already gone
--   pause duration_us            -> the pause end, µs since the epoch
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local op = ARGV[1]

-- Keeps the lease set alive until its latest lease has expired (plus a margin).
local function expire_leases()
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', KEYS[2], math.floor(tonumber(last[2])) + 1000)
  end
end

if op == 'acquire' then
  local delay_us = tonumber(ARGV[2])
  local concurrency = tonumber(ARGV[3])
  local lease_ms = tonumber(ARGV[4])
  local lease_id = ARGV[5]
  local max_ahead_us = tonumber(ARGV[6])

  -- A crashed holder's lease is reclaimed here, by expiry.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)

  local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
  if pause > now_us then
    return {0, pause - now_us, 1, now_us}
  end

  local held = redis.call('ZCARD', KEYS[2])
  if held >= concurrency then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local until_expiry_us = (tonumber(first[2]) - now_ms) * 1000
    return {0, math.max(until_expiry_us, 1000), 2, now_us}
  end

  -- GCRA with τ = 0: the start is the later of now and the reserved next slot,
  -- and the next slot moves to start + delay. Reserving slots ahead lets
  -- callers queue instead of polling, so the limit is reached, never exceeded.
  local start_us = now_us
  if delay_us > 0 then
    local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
    if tat > start_us then
      start_us = tat
    end
    if start_us - now_us > max_ahead_us then
      return {0, start_us - now_us - max_ahead_us, 3, now_us}
    end
    local next_us = start_us + delay_us
    redis.call('SET', KEYS[1], string.format('%d', next_us), 'PXAT', math.floor(next_us / 1000) + 1000)
  end

  local start_ms = math.floor(start_us / 1000)
  redis.call('ZADD', KEYS[2], start_ms + lease_ms, lease_id)
  expire_leases()
  return {1, start_us - now_us, 0, now_us}
elseif op == 'release' then
  local removed = redis.call('ZREM', KEYS[2], ARGV[2])
  return removed
elseif op == 'extend' then
  local lease_id = ARGV[2]
  local lease_ms = tonumber(ARGV[3])
  if not redis.call('ZSCORE', KEYS[2], lease_id) then
    return 0
  end
  redis.call('ZADD', KEYS[2], 'XX', now_ms + lease_ms, lease_id)
  expire_leases()
  return 1
elseif op == 'pause' then
  local until_us = now_us + tonumber(ARGV[2])
  local current = tonumber(redis.call('GET', KEYS[3]) or '0')
  if current > until_us then
    return current
  end
  redis.call('SET', KEYS[3], string.format('%d', until_us), 'PXAT', math.floor(until_us / 1000) + 1)
  return until_us
end
return redis.error_reply('aegis rate limit script: unknown operation ' .. tostring(op))
