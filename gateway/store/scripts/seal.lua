-- seal.lua: record that the next 256 entries are in the tile store, and trim what
-- the tiles now hold from Redis. Run only after every file is written and fsynced.
--
-- KEYS[1] the sealed log (hash: size, trimmed, store_id)   KEYS[2] the seal lease
-- KEYS[3] audit entries (list)   KEYS[4] Merkle tree nodes (hash)
-- ARGV[1] the lease owner   ARGV[2] the sealed size the tiles were written after
-- ARGV[3] the new sealed size   ARGV[4] the tile store's id
-- ARGV[5] entries to keep in Redis below the sealed size (the margin)
-- ARGV[6..] the tree node fields the sealed tiles hold ("<level>:<index>")
-- Returns {'ok', trimmed}; {'lease'} when the caller no longer holds the lease;
-- {'moved', size} when the sealed size is not ARGV[2] (another sealer was first);
-- {'store', id} when the log was sealed into another tile store. Nothing is
-- written unless 'ok'.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {'lease'}
end
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
if size ~= tonumber(ARGV[2]) then
  return {'moved', tostring(size)}
end
local store = redis.call('HGET', KEYS[1], 'store_id')
if store and store ~= ARGV[4] then
  return {'store', store}
end
local new_size = tonumber(ARGV[3])
local trimmed = tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0')
local keep = tonumber(ARGV[5])
local target = math.max(trimmed, new_size - keep - (new_size - keep) % 256)
if target > trimmed then
  redis.call('LTRIM', KEYS[3], target - trimmed, -1)
end
for first = 6, #ARGV, 256 do
  redis.call('HDEL', KEYS[4], unpack(ARGV, first, math.min(first + 255, #ARGV)))
end
redis.call('HSET', KEYS[1], 'size', new_size, 'trimmed', target, 'store_id', ARGV[4])
return {'ok', tostring(target)}
