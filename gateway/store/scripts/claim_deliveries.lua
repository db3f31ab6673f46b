-- claim_deliveries.lua: lease the due deliveries among the candidates a worker read,
-- so that no other worker sends them while this one does.
--
-- KEYS[1] the due queue (sorted set: delivery id -> ms it is due or its lease ends)
-- KEYS[2..n+1] the delivery hashes of the n candidate ids, in ARGV order
-- ARGV[1] now (ms)   ARGV[2] the lease's end (ms)   ARGV[3..n+2] the candidate ids
--
-- A candidate is leased only if it is still queued and due: another worker may have
-- leased (or finished) it since it was read, and the check and the lease are one
-- step here. An id whose hash is gone (its TTL ran out) leaves the queue.
-- Returns {id, {field, value, ...}, ...} for each leased delivery.
local now = tonumber(ARGV[1])
local claimed = {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local fields = redis.call('HGETALL', KEYS[i])
    if #fields == 0 then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[1], ARGV[2], id)
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = fields
    end
  end
end
return claimed
