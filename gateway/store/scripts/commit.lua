-- commit.lua: append a batch of signed audit entries and apply the state changes
-- they record, atomically (group commit; compare-and-append on the log head).
--
-- KEYS[1] audit head (hash: seq, hash, frontier, key_id)   KEYS[2] audit entries (list)
-- KEYS[3] Merkle tree nodes (hash: "<level>:<index>" -> hex node hash)
-- KEYS[4] audit key history (hash: "<key_id>" -> JSON, "<key_id>:last_seq" -> seq)
-- KEYS[5..] keys named by index in checks and ops
-- ARGV[1] the head seq the batch was built on   ARGV[3] the head key_id it was signed for
-- ARGV[4], ARGV[5] the seq and entry hash of the batch's last entry
-- ARGV[2] JSON {"head": {"seq", "hash", "frontier", "key_id"},
--          "nodes": ["<level>:<index>", hex, ...] (every subtree the entries complete),
--          "keys": [field, value, ...] (key history changes: first key, rotations),
--          "items": [{"entries": [line...],
--          "checks": [[key, "hfield", field, value] | [key, "exists"] |
--                     [key, "equals", value]],
--          "ops": [["set", key, value, px] | ["hset", key, field, value, ...] |
--                  ["pexpire", key, ms] | ["zadd", key, score, member] |
--                  ["zrem", key, member] | ["del", key] | ["publish", channel, message]]}]}
--
-- Returns {'ok'}; {'moved', seq, hash, frontier, key_id} when another writer appended
-- first or the head names another signing key (a rotation, or a misconfigured replica);
-- {'failed', i} when item i's check does not hold; {'retry', i} when item i checks a
-- key an earlier item of the same batch writes. Nothing is written unless 'ok'.
-- A call resent after its reply was lost (the client retries on a dropped
-- connection) finds its batch already appended and answers 'ok' again.
-- All entries go in with one RPUSH (per 256), so INFO commandstats' rpush calls
-- count the batches appended.
local head_seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local head_key = redis.call('HGET', KEYS[1], 'key_id') or ''
if head_seq ~= tonumber(ARGV[1]) or head_key ~= ARGV[3] then
  -- Compare-and-append failed; but if this very batch is in the log (its last entry
  -- is there, the list holding exactly head_seq entries), the first call appended
  -- it: rebuilding it on the new head would append it twice.
  local last_seq = tonumber(ARGV[4])
  if last_seq > tonumber(ARGV[1]) and head_seq >= last_seq then
    local line = redis.call('LINDEX', KEYS[2], last_seq - 1 - head_seq)
    if line and cjson.decode(line).entry_hash == ARGV[5] then
      return {'ok'}
    end
  end
  return {
    'moved',
    tostring(head_seq),
    redis.call('HGET', KEYS[1], 'hash') or '',
    redis.call('HGET', KEYS[1], 'frontier') or '[]',
    head_key,
  }
end
local batch = cjson.decode(ARGV[2])
local touched = {}
for i, item in ipairs(batch.items) do
  for _, check in ipairs(item.checks) do
    local key = KEYS[check[1]]
    if touched[key] then
      return {'retry', tostring(i)}
    end
    local holds
    if check[2] == 'hfield' then
      holds = redis.call('HGET', key, check[3]) == check[4]
    elseif check[2] == 'equals' then
      holds = redis.call('GET', key) == check[3]
    else
      holds = redis.call('EXISTS', key) == 1
    end
    if not holds then
      return {'failed', tostring(i)}
    end
  end
  for _, op in ipairs(item.ops) do
    if op[1] ~= 'publish' then
      touched[KEYS[op[2]]] = true
    end
  end
end
local lines = {}
for _, item in ipairs(batch.items) do
  for _, line in ipairs(item.entries) do
    lines[#lines + 1] = line
  end
end
for first = 1, #lines, 256 do
  redis.call('RPUSH', KEYS[2], unpack(lines, first, math.min(first + 255, #lines)))
end
for _, item in ipairs(batch.items) do
  for _, op in ipairs(item.ops) do
    local name = op[1]
    if name == 'set' then
      if tonumber(op[4]) > 0 then
        redis.call('SET', KEYS[op[2]], op[3], 'PX', op[4])
      else
        redis.call('SET', KEYS[op[2]], op[3])
      end
    elseif name == 'hset' then
      local args = {}
      for j = 3, #op do
        args[#args + 1] = op[j]
      end
      redis.call('HSET', KEYS[op[2]], unpack(args))
    elseif name == 'pexpire' then
      redis.call('PEXPIRE', KEYS[op[2]], op[3])
    elseif name == 'zadd' then
      redis.call('ZADD', KEYS[op[2]], op[3], op[4])
    elseif name == 'zrem' then
      redis.call('ZREM', KEYS[op[2]], op[3])
    elseif name == 'del' then
      redis.call('DEL', KEYS[op[2]])
    elseif name == 'publish' then
      redis.call('PUBLISH', op[2], op[3])
    end
  end
end
-- The nodes land with their entries; HSET in chunks keeps unpack() within Lua's stack.
local nodes = batch.nodes
for first = 1, #nodes, 256 do
  redis.call('HSET', KEYS[3], unpack(nodes, first, math.min(first + 255, #nodes)))
end
if #batch.keys > 0 then
  redis.call('HSET', KEYS[4], unpack(batch.keys))
end
redis.call('HSET', KEYS[1], 'seq', batch.head.seq, 'hash', batch.head.hash,
  'frontier', cjson.encode(batch.head.frontier), 'key_id', batch.head.key_id)
return {'ok'}
