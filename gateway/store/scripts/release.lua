-- release.lua: give back an action_id that nothing was or will be committed for,
-- and take its counts back out of what observe.lua counted, so that a retry counts
-- it once. Only this call's claim is released, never another call's.
--
-- KEYS as observe.lua's 1-12. ARGV[1] the claim   ARGV[2] action_type
-- ARGV[3] fingerprint   ARGV[4] agent mark   ARGV[5] request bytes
-- ARGV[6] session id   ARGV[7] the minute it was counted in (ms / 60000)
-- LREM with count 1 removes the newest equal entry: the one this claim pushed, or
-- one equal to it, which leaves the same counts for detection.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('LREM', KEYS[2], 1, ARGV[2])
redis.call('LREM', KEYS[3], 1, ARGV[3])
redis.call('LREM', KEYS[4], 1, ARGV[4])
local token = string.sub(ARGV[1], 68)
if redis.call('ZREM', KEYS[5], token .. '|' .. ARGV[5]) == 1 then
  redis.call('HINCRBY', KEYS[8], 'rate:bytes', -tonumber(ARGV[5]))
end
redis.call('ZREM', KEYS[6], token)
redis.call('ZREM', KEYS[7], token)
local function uncount(key, field)
  local left = tonumber(redis.call('HGET', key, field) or '0')
  if left > 1 then
    redis.call('HINCRBY', key, field, -1)
  elseif left == 1 then
    redis.call('HDEL', key, field)
  end
end
if redis.call('HGET', KEYS[8], 'apm:minute') == ARGV[7] then
  uncount(KEYS[8], 'apm:count')
end
uncount(KEYS[12], ARGV[6])
if redis.call('HEXISTS', KEYS[12], ARGV[6]) == 0 then
  redis.call('ZREM', KEYS[11], ARGV[6])
end
for _, key in ipairs({KEYS[9], KEYS[10]}) do
  if redis.call('HEXISTS', key, ARGV[2]) == 1 then
    uncount(key, ARGV[2])
  else
    uncount(key, '~other')
  end
end
return 1
