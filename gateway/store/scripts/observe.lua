-- observe.lua: the one read-modify-write of a Submit before its verdict, in the
-- agent's slot. Claims the action_id (idempotency), checks the rate windows, and
-- counts the action everywhere detection looks: the session's recent history, the
-- agent's recent history over all sessions, the sliding windows, the learned
-- baselines (actions per minute, calls per task) and the action-type profiles.
-- Returns what the detectors judge; on a single node also the session's pause.
--
-- KEYS[1] action claim            KEYS[2] session's recent types (list)
-- KEYS[3] session's fingerprints  KEYS[4] agent's recent session+fingerprint marks
-- KEYS[5] agent's rate window (zset: "<token>|<bytes>" by time in ms)
-- KEYS[6] session's rate window   KEYS[7] agent's window for this action type
-- KEYS[8] agent's stats (hash)    KEYS[9] agent's type profile (hash)
-- KEYS[10] session's type mix     KEYS[11] agent's open tasks (zset: session by last use)
-- KEYS[12] calls per open task (hash: session -> calls)
-- KEYS[13] session pause, KEYS[14] agent quarantine (optional: on a cluster they
--          are in the {audit} slot, read apart)
--
-- ARGV[1] claim ttl ms   ARGV[2] action_type   ARGV[3] fingerprint
-- ARGV[4] session history length   ARGV[5] session idle timeout ms
-- ARGV[6] the claim 'p|<digest>|<token>'   ARGV[7] now (ms)   ARGV[8] window (ms)
-- ARGV[9..12] limits: agent actions, session actions, this type's actions, agent
--             bytes (0: none)   ARGV[13] this request's bytes
-- ARGV[14] the agent mark (session + fingerprint)   ARGV[15] agent history length
-- ARGV[16] baseline lifetime ms   ARGV[17] min samples   ARGV[18] z threshold
-- ARGV[19] min std fraction   ARGV[20], ARGV[21] actions_per_minute prior mean, std
-- ARGV[22], ARGV[23] calls_per_task prior mean, std   ARGV[24] task idle ms
-- ARGV[25] max types per profile   ARGV[26] session actions before the profiles
--          are returned   ARGV[27] '1' to learn baselines   ARGV[28] session id
--
-- The claim is 'p|<digest>|<token>' while a call decides the action, then
-- 'd|<digest>|' once decided (the decision is in the {audit} slot). Returns:
--   {'seen'} | {'pending'} | {'reused'}   as before: nothing is counted;
--   {'limited', window, counts}  one more action would take `window` (agent,
--       session, type, bytes) over its limit: nothing is claimed or counted, so a
--       flood does not grow any key;
--   {'new', pause JSON or '', types, fingerprints, agent marks, counts, stats,
--       samples, session mix, agent profile}   claimed and counted (or claimed by
--       this very call before, resent after a lost reply: then nothing is counted
--       again). counts = {agent, session, type, bytes} in the window, this action
--       included; stats = flat {metric, n, mean, m2, ...}; samples = flat {metric,
--       value} to judge now; mix/profile flat hashes ('' when not returned);
--       then the quarantine JSON or ''.
-- Numbers that are not integers are returned as strings (Lua numbers become
-- integer replies).
local now = tonumber(ARGV[7])
local window = tonumber(ARGV[8])
local since = now - window
local idle = ARGV[5]
local life = tonumber(ARGV[16])
local existing = redis.call('GET', KEYS[1])
local claim = ARGV[6]

-- Baselines: learn() and stats_of() come from welford.lua, prepended at load.
local judge = {
  min_samples = tonumber(ARGV[17]),
  z_threshold = tonumber(ARGV[18]),
  min_std_fraction = tonumber(ARGV[19]),
}
local learning = ARGV[27] == '1'

-- The windows: drop what left them, then count. The agent window's byte total is
-- kept beside it ('rate:bytes' in the stats hash), less what leaves the window.
local function trim(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. since)
end

local function trim_agent_window()
  local gone = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. since)) do
    gone = gone + tonumber(string.match(member, '|(%d+)$'))
  end
  trim(KEYS[5])
  if redis.call('EXISTS', KEYS[5]) == 0 then
    redis.call('HSET', KEYS[8], 'rate:bytes', 0)
  elseif gone > 0 then
    redis.call('HINCRBY', KEYS[8], 'rate:bytes', -gone)
  end
end

local function counts()
  local type_count = 0
  if tonumber(ARGV[11]) > 0 then
    type_count = redis.call('ZCARD', KEYS[7])
  end
  local bytes = tonumber(redis.call('HGET', KEYS[8], 'rate:bytes') or '0')
  return {redis.call('ZCARD', KEYS[5]), redis.call('ZCARD', KEYS[6]), type_count, bytes}
end

local fresh = existing ~= claim
if fresh and existing then
  if string.sub(existing, 3, 66) ~= string.sub(claim, 3, 66) then
    return {'reused'}
  end
  if string.sub(existing, 1, 1) == 'p' then
    return {'pending'}
  end
  return {'seen'}
end

trim_agent_window()
trim(KEYS[6])
if tonumber(ARGV[11]) > 0 then
  trim(KEYS[7])
end
local token = string.sub(claim, 68)
local request_bytes = tonumber(ARGV[13])
local counted = nil  -- the windows with this action, once it is admitted
if fresh then
  local c = counts()
  local limits = {tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])}
  local after = {c[1] + 1, c[2] + 1, c[3] + 1, c[4] + request_bytes}
  local names = {'agent', 'session', 'type', 'bytes'}
  for i = 1, 4 do
    if limits[i] > 0 and after[i] > limits[i] then
      return {'limited', names[i], c}
    end
  end
  if limits[3] == 0 then
    after[3] = 0  -- no window for this type
  end
  counted = after

  redis.call('SET', KEYS[1], claim, 'PX', ARGV[1])
  local keep = tonumber(ARGV[4]) - 1
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, keep)
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, keep)
  if tonumber(ARGV[15]) > 0 then
    redis.call('LPUSH', KEYS[4], ARGV[14])
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[15]) - 1)
  end
  redis.call('ZADD', KEYS[5], now, token .. '|' .. request_bytes)
  redis.call('HINCRBY', KEYS[8], 'rate:bytes', request_bytes)
  redis.call('ZADD', KEYS[6], now, token)
  if tonumber(ARGV[11]) > 0 then
    redis.call('ZADD', KEYS[7], now, token)
  end

  -- actions_per_minute: each calendar minute the agent was active is one sample.
  local minute = math.floor(now / 60000)
  local last = redis.call('HMGET', KEYS[8], 'apm:minute', 'apm:count')
  if last[1] and tonumber(last[1]) ~= minute then
    if learning then
      learn(KEYS[8], 'actions_per_minute', tonumber(last[2] or '0'), tonumber(ARGV[20]),
        tonumber(ARGV[21]), judge)
    end
    redis.call('HSET', KEYS[8], 'apm:count', 0)
  end
  redis.call('HSET', KEYS[8], 'apm:minute', minute)
  redis.call('HINCRBY', KEYS[8], 'apm:count', 1)

  -- calls_per_task: a session idle for the task idle time is a finished task; its
  -- calls are a sample. At most 64 open tasks per agent (the oldest closes first).
  local session = ARGV[28]
  redis.call('HINCRBY', KEYS[12], session, 1)
  redis.call('ZADD', KEYS[11], now, session)
  local done = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', '(' .. (now - tonumber(ARGV[24])),
    'LIMIT', 0, 16)
  local open = redis.call('ZCARD', KEYS[11]) - #done
  if open > 64 then
    for _, s in ipairs(redis.call('ZRANGE', KEYS[11], 0, open - 65)) do
      done[#done + 1] = s
    end
  end
  for _, s in ipairs(done) do
    local calls = tonumber(redis.call('HGET', KEYS[12], s) or '0')
    if learning and calls > 0 then
      learn(KEYS[8], 'calls_per_task', calls, tonumber(ARGV[22]), tonumber(ARGV[23]), judge)
    end
    redis.call('HDEL', KEYS[12], s)
    redis.call('ZREM', KEYS[11], s)
  end

  -- Type profiles, bounded: a type beyond the first max_types counts as '~other'.
  local max_types = tonumber(ARGV[25])
  local function count_type(key)
    local name = ARGV[2]
    if redis.call('HEXISTS', KEYS[key], name) == 0 and redis.call('HLEN', KEYS[key]) >= max_types then
      name = '~other'
    end
    redis.call('HINCRBY', KEYS[key], name, 1)
  end
  count_type(9)
  count_type(10)
end

-- Lifetimes: windows a little past their span; history and mix with the session;
-- baselines and profile with the agent.
for i = 5, 7 do
  redis.call('PEXPIRE', KEYS[i], window + 1000)
end
for _, i in ipairs({2, 3, 4, 10}) do
  redis.call('PEXPIRE', KEYS[i], idle)
end
for _, i in ipairs({8, 9, 11, 12}) do
  redis.call('PEXPIRE', KEYS[i], life)
end
local pause, quarantine = false, false
if KEYS[13] then
  pause = redis.call('GET', KEYS[13])
  if pause then
    redis.call('PEXPIRE', KEYS[13], idle)
  end
  quarantine = redis.call('GET', KEYS[14])
end

local stats = {}
for _, metric in ipairs({'actions_per_minute', 'calls_per_task', 'error_rate', 'tokens_per_action'}) do
  local n, mean, m2 = stats_of(KEYS[8], metric)
  stats[#stats + 1] = metric
  stats[#stats + 1] = tostring(n)
  stats[#stats + 1] = string.format('%.17g', mean)
  stats[#stats + 1] = string.format('%.17g', m2)
end
local c = counted or counts()
local calls = tonumber(redis.call('HGET', KEYS[12], ARGV[28]) or '0')
local samples = {'actions_per_minute', tostring(c[1]), 'calls_per_task', tostring(calls)}
-- What outcomes left to judge: the current error rate, and the tokens of the last
-- reported outcome, once (outcome.lua sets them).
local outcome = redis.call('HMGET', KEYS[8], 'error_rate:now', 'tokens:pending')
if outcome[1] then
  samples[#samples + 1] = 'error_rate'
  samples[#samples + 1] = outcome[1]
end
if outcome[2] and fresh then
  samples[#samples + 1] = 'tokens_per_action'
  samples[#samples + 1] = outcome[2]
  redis.call('HDEL', KEYS[8], 'tokens:pending')
end
local mix, profile = '', ''
if calls >= tonumber(ARGV[26]) then
  mix = redis.call('HGETALL', KEYS[10])
  profile = redis.call('HGETALL', KEYS[9])
end
return {
  'new',
  pause or '',
  redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('LRANGE', KEYS[3], 0, -1),
  redis.call('LRANGE', KEYS[4], 0, -1),
  c,
  stats,
  samples,
  mix,
  profile,
  quarantine or '',
}
