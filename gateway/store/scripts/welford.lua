-- welford.lua: prepended to the scripts that learn baselines (observe, outcome).
-- Welford's online mean and variance per metric, in a hash: '<metric>:n', ':mean',
-- ':m2'. A sample is learned only if it is not anomalous against the reference it
-- is judged by: the prior below `min_samples` samples, else the learned mean and
-- standard deviation floored at `min_std_fraction` of the prior's. The same maths
-- as gateway/domain/detect/anomaly.py (tests/integration/test_detection_store.py
-- checks that they agree).
local function stats_of(key, metric)
  local v = redis.call('HMGET', key, metric .. ':n', metric .. ':mean', metric .. ':m2')
  return tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')
end

local function learn(key, metric, x, prior_mean, prior_std, judge)
  local n, mean, m2 = stats_of(key, metric)
  local ref_mean, ref_std = prior_mean, prior_std
  if n >= judge.min_samples then
    local variance = 0
    if n >= 2 then
      variance = m2 / (n - 1)
    end
    ref_mean = mean
    ref_std = math.max(math.sqrt(variance), prior_std * judge.min_std_fraction)
  end
  if (x - ref_mean) / ref_std > judge.z_threshold then
    return
  end
  n = n + 1
  local delta = x - mean
  mean = mean + delta / n
  m2 = m2 + delta * (x - mean)
  redis.call('HSET', key, metric .. ':n', n, metric .. ':mean', string.format('%.17g', mean),
    metric .. ':m2', string.format('%.17g', m2))
end
