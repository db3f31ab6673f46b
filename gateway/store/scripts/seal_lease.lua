-- seal_lease.lua: take, renew or give up the seal lease, atomically.
--
-- KEYS[1] the seal lease (string: the owner, with a TTL)
-- ARGV[1] 'take' or 'release'   ARGV[2] the owner   ARGV[3] the TTL in ms ('take')
-- 'take' returns 1 when the caller holds the lease now (taken, or its own renewed),
-- 0 when another owner holds it; 'release' deletes it only if the caller holds it.
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'release' then
  if holder == ARGV[2] then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if holder and holder ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
