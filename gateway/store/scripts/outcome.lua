-- outcome.lua: a reported outcome feeds the agent's baselines, in the agent's slot.
-- (The outcome's audit entry, and the check that it is the action's first report,
-- are committed before this, in the {audit} slot.)
--
-- KEYS[1] agent's stats (hash)   KEYS[2] agent's last outcomes (list of '1' failed /
--          '0' succeeded, newest first)
-- ARGV[1] '1' if it failed   ARGV[2] tokens (-1: not reported)   ARGV[3] outcomes
-- window   ARGV[4] outcomes before a rate counts   ARGV[5] min samples
-- ARGV[6] z threshold   ARGV[7] min std fraction   ARGV[8], ARGV[9] error_rate prior
-- mean, std   ARGV[10], ARGV[11] tokens_per_action prior mean, std
-- ARGV[12] baseline lifetime ms   ARGV[13] '1' to learn baselines
--
-- The error rate over the last `window` outcomes becomes 'error_rate:now' (judged at
-- every later Submit) and, once per `window` outcomes, a sample of the error_rate
-- baseline; the tokens become 'tokens:pending' (judged at the next Submit, once) and a
-- sample of tokens_per_action. A sample learns only if it is not anomalous, as in
-- observe.lua. Returns {error rate or '', outcomes counted}.
-- learn() comes from welford.lua, prepended at load.
local judge = {
  min_samples = tonumber(ARGV[5]),
  z_threshold = tonumber(ARGV[6]),
  min_std_fraction = tonumber(ARGV[7]),
}
local learning = ARGV[13] == '1'

local window = tonumber(ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, window - 1)
local recent = redis.call('LRANGE', KEYS[2], 0, -1)
local failed = 0
for _, v in ipairs(recent) do
  if v == '1' then
    failed = failed + 1
  end
end
local rate = ''
if #recent >= tonumber(ARGV[4]) then
  local value = failed / #recent
  rate = string.format('%.17g', value)
  redis.call('HSET', KEYS[1], 'error_rate:now', rate)
  local counted = redis.call('HINCRBY', KEYS[1], 'error_rate:since', 1)
  if counted >= window then
    if learning then
      learn(KEYS[1], 'error_rate', value, tonumber(ARGV[8]), tonumber(ARGV[9]), judge)
    end
    redis.call('HSET', KEYS[1], 'error_rate:since', 0)
  end
end
local tokens = tonumber(ARGV[2])
if tokens >= 0 then
  redis.call('HSET', KEYS[1], 'tokens:pending', tokens)
  if learning then
    learn(KEYS[1], 'tokens_per_action', tokens, tonumber(ARGV[10]), tonumber(ARGV[11]), judge)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[12])
redis.call('PEXPIRE', KEYS[2], ARGV[12])
return {rate, #recent}
