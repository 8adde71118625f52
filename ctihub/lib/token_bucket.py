"""A token bucket in Redis: one Lua script takes a token atomically, with Redis's own clock.

Processes share the bucket (its state is a hash in Redis) and their clocks may disagree, so the script
reads ``TIME`` itself. A bucket of capacity ``c`` refilled at ``r`` tokens/s lets through at most ``c + r``
requests in any one-second window. The inbound rate limit (``ctihub.lib.ratelimit``) takes one token;
retailCRM's outbound limit (``crm_sync.retailcrm.ratelimit``) builds its script with priorities on the
same refill and save.
"""

# The bucket every script shares: refill from Redis's clock up to the capacity. KEYS[1] the bucket;
# ARGV[1] rate (tokens/s), ARGV[2] capacity, ARGV[3] the key's ttl (ms). Leaves `tokens`, `now_parts`,
# `now`, `rate` and `wait_ms` (0) for the decision that follows, and BUCKET_SAVE writes the bucket back.
BUCKET_REFILL = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate / 1000000)
local wait_ms = 0
"""
BUCKET_SAVE = """
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], ttl)
"""

# One token, no priorities (the inbound limit, ctihub.lib.ratelimit).
# Returns 0 when a token was taken, else how many milliseconds until one will be there.
TAKE_TOKEN = BUCKET_REFILL + """
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
""" + BUCKET_SAVE + "return wait_ms\n"
