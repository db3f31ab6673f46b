-- commit.lua: append a batch of signed audit entries and apply the intents they
-- record, atomically (group commit; compare-and-append on the log head).
--
-- KEYS[1] audit head (hash: seq, hash, frontier, key_id)   KEYS[2] audit entries (list)
-- KEYS[3] Merkle tree nodes (hash: "<level>:<index>" -> hex node hash)
-- KEYS[4] audit key history (hash: "<key_id>" -> JSON, "<key_id>:last_seq" -> seq)
-- KEYS[5] the sealed log (hash: size, ...; seal.lua)
-- KEYS[6..] keys the intents name by index. All in the {audit} slot, except a
--           decision's claim marker on a single node (store/intents.py).
-- ARGV[1] the head seq the batch was built on   ARGV[3] the head key_id it was signed for
-- ARGV[4], ARGV[5] the seq and entry hash of the batch's last entry
-- ARGV[6..5+lines] the batch's entry lines, in order, then the values the items
--          name by index (records, hold and alert JSON): arguments of their own,
--          so that none is escaped into, and parsed out of, the JSON below
-- ARGV[2] JSON {"head": {"seq", "hash", "frontier", "key_id"},
--          "nodes": ["<level>:<index>", hex, ...] (every subtree the entries complete),
--          "keys": [field, value, ...] (key history changes: first key, rotations),
--          "lines": the number of entry lines,
--          "backlog": the most entries not yet sealed into tiles the log may hold
--                     (0: no limit); an append that would pass it is refused,
--          "items": [{"kind": "none" | "decide" | "resolve" | "create" | "remove" |
--                     "acknowledge", and the fields of its kind (below)}]}
--
--   decide   record, value, px (the decided record: must not exist yet);
--            [marker, marker_value] the claim marker; [hold {key, json, status, px,
--            pending, expires_at, hold_id}]; [pause {key, value, px}]
--   resolve  hold (status must be 'pending' with approvals_before approvals), json,
--            status, approvals, resolved (then px, pending: retention and out of
--            the index), hold_id, channel and event (published)
--   (a new hold publishes its event on its channel too)
--   create   record (must not exist yet), value, px (0: no ttl): an outcome, a
--            quarantine
--   remove   record (must exist): deleted; [index, member]: also removed from that
--            sorted set (a session's pause, a quarantine)
--   decide's pause also has [index, member, score] (the paused-sessions index)
--   acknowledge  record (an alert hash whose status must be 'active'), json: the
--            acknowledged alert; removed from index (the active alerts) as member,
--            and added to feed (a stream, MAXLEN ~ feed_max)
--
-- Returns {'ok'}; {'moved', seq, hash, frontier, key_id} when another writer appended
-- first or the head names another signing key (a rotation, or a misconfigured replica);
-- {'backlog', unsealed} when the entries not sealed into tiles would pass the
-- limit (the tile store is failing: the gateway fails closed);
-- {'failed', i} when item i's precondition does not hold; {'retry', i} when item i
-- checks a key an earlier item of the same batch writes. Nothing is written unless
-- 'ok'. A call resent after its reply was lost (the client retries on a dropped
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

-- An item's values (its record, its JSON) are arguments after the lines, by index.
local values_base = 0
local function value(i)
  return ARGV[values_base + i]
end

-- The key an item's precondition reads, and whether it holds.
local function check(item)
  if item.kind == 'decide' or item.kind == 'create' then
    return item.record, redis.call('EXISTS', KEYS[item.record]) == 0
  elseif item.kind == 'resolve' then
    local state = redis.call('HMGET', KEYS[item.hold], 'status', 'approvals')
    return item.hold, state[1] == 'pending' and (state[2] or '0') == item.approvals_before
  elseif item.kind == 'remove' then
    return item.record, redis.call('EXISTS', KEYS[item.record]) == 1
  elseif item.kind == 'acknowledge' then
    return item.record, redis.call('HGET', KEYS[item.record], 'status') == 'active'
  end
  return nil, true
end

-- The keys an item writes (for the same-batch dependency check).
local function writes(item)
  if item.kind == 'decide' then
    local keys = {item.record}
    if item.hold then
      keys[#keys + 1] = item.hold.key
    end
    if item.pause then
      keys[#keys + 1] = item.pause.key
    end
    return keys
  elseif item.kind == 'resolve' then
    return {item.hold}
  elseif item.kind == 'remove' or item.kind == 'create' or item.kind == 'acknowledge' then
    return {item.record}
  end
  return {}
end

local function apply(item)
  if item.kind == 'decide' then
    redis.call('SET', KEYS[item.record], value(item.value), 'PX', item.px)
    if item.marker then
      redis.call('SET', KEYS[item.marker], item.marker_value, 'PX', item.px)
    end
    local hold = item.hold
    if hold then
      redis.call('HSET', KEYS[hold.key], 'json', value(hold.json), 'status', hold.status,
        'approvals', 0)
      redis.call('PEXPIRE', KEYS[hold.key], hold.px)
      redis.call('ZADD', KEYS[hold.pending], hold.expires_at, hold.hold_id)
      redis.call('PUBLISH', hold.channel, hold.event)
    end
    local pause = item.pause
    if pause then
      redis.call('SET', KEYS[pause.key], value(pause.value), 'PX', pause.px)
      redis.call('ZADD', KEYS[pause.index], pause.score, pause.member)
    end
  elseif item.kind == 'resolve' then
    redis.call('HSET', KEYS[item.hold], 'json', value(item.json), 'status', item.status,
      'approvals', item.approvals)
    if item.resolved then
      redis.call('PEXPIRE', KEYS[item.hold], item.px)
      redis.call('ZREM', KEYS[item.pending], item.hold_id)
    end
    redis.call('PUBLISH', item.channel, item.event)
  elseif item.kind == 'remove' then
    redis.call('DEL', KEYS[item.record])
    if item.index then
      redis.call('ZREM', KEYS[item.index], item.member)
    end
  elseif item.kind == 'acknowledge' then
    redis.call('HSET', KEYS[item.record], 'json', value(item.json), 'status', 'acknowledged')
    redis.call('ZREM', KEYS[item.index], item.member)
    redis.call('XADD', KEYS[item.feed], 'MAXLEN', '~', item.feed_max, '*',
      'event', 'acknowledged', 'json', value(item.json))
  elseif item.kind == 'create' then
    if tonumber(item.px) > 0 then
      redis.call('SET', KEYS[item.record], value(item.value), 'PX', item.px)
    else
      redis.call('SET', KEYS[item.record], value(item.value))
    end
  end
end

local batch = cjson.decode(ARGV[2])
values_base = 5 + batch.lines
if batch.backlog > 0 then
  local unsealed = head_seq - tonumber(redis.call('HGET', KEYS[5], 'size') or '0')
  if unsealed + batch.lines > batch.backlog then
    return {'backlog', tostring(unsealed)}
  end
end
local touched = {}
for i, item in ipairs(batch.items) do
  local key, holds = check(item)
  if key and touched[key] then
    return {'retry', tostring(i)}
  end
  if not holds then
    return {'failed', tostring(i)}
  end
  for _, written in ipairs(writes(item)) do
    touched[written] = true
  end
end
local last_line = 5 + batch.lines
for first = 6, last_line, 256 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 255, last_line)))
end
for _, item in ipairs(batch.items) do
  apply(item)
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
