-- queue_deliveries.lua: queue new deliveries, due now; a delivery that is already
-- queued (the same alert for the same channel) is left as it is.
--
-- KEYS[1] the due queue   KEYS[2..n+1] the delivery hashes
-- ARGV[1] now (ms)   ARGV[2] hash TTL (ms)   ARGV[3] fields per delivery (f)
-- then for each delivery, in KEYS order: its id, then its f hash field/value strings
-- (store/alert_deliveries.py's `delivery_fields`).
local width = tonumber(ARGV[3]) + 1
for i = 2, #KEYS do
  local at = 4 + (i - 2) * width
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], unpack(ARGV, at + 1, at + width - 1))
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[at])
  end
end
return #KEYS - 1
