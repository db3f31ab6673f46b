-- publish_checkpoint.lua: make a signed checkpoint the latest published one, unless
-- one of a larger tree already is (replicas publish concurrently; heads only grow).
--
-- KEYS[1] published checkpoint (hash: size, note, key_id)
-- ARGV[1] tree size   ARGV[2] the signed note   ARGV[3] the signing key id
-- Returns 1 if published, 0 if a larger checkpoint stays.
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '-1')
if tonumber(ARGV[1]) < size then
  return 0
end
redis.call('HSET', KEYS[1], 'size', ARGV[1], 'note', ARGV[2], 'key_id', ARGV[3])
return 1
