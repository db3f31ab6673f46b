-- fire_alert.lua: an alert fires once per cooldown window per rule and subject,
-- cluster-wide; when it does, it is recorded, announced and its deliveries queued,
-- atomically (all in the {audit} slot).
--
-- KEYS[1] cooldown (string '<until ms>|<alert id>'; PX the cooldown)   KEYS[2] the alert
-- KEYS[3] active alerts (zset)   KEYS[4] recent alerts (zset)   KEYS[5] feed (stream)
-- KEYS[6] deliveries due (zset)   KEYS[7..] one delivery hash per delivery
-- ARGV[1] cooldown ms (0: none)   ARGV[2] alert id   ARGV[3] alert JSON
-- ARGV[4] fired-at ms   ARGV[5] retention ms   ARGV[6] alerts kept at most
-- ARGV[7] feed length at most   ARGV[8] fields per delivery (n)
-- ARGV[9..] per delivery: its id, then its n field/value strings (n even)
--
-- Returns {'fired'}, or {'cooling', <id of the alert that started the cooldown>,
-- <the ms it ends>}.
-- The cooldown ends at the gateway's time (ARGV[4] + cooldown), not only when the
-- key expires, so that replicas agree on it as their clocks do.
local cooldown = tonumber(ARGV[1])
local fired = tonumber(ARGV[4])
if cooldown > 0 then
  local current = redis.call('GET', KEYS[1])
  if current then
    local bar = string.find(current, '|', 1, true)
    local ends = string.sub(current, 1, bar - 1)
    if fired < tonumber(ends) then
      return {'cooling', string.sub(current, bar + 1), ends}
    end
  end
  redis.call('SET', KEYS[1], string.format('%d|%s', fired + cooldown, ARGV[2]), 'PX', cooldown)
end
local retention = tonumber(ARGV[5])
local most = tonumber(ARGV[6])
redis.call('HSET', KEYS[2], 'json', ARGV[3], 'status', 'active')
redis.call('PEXPIRE', KEYS[2], retention)
for _, index in ipairs({KEYS[3], KEYS[4]}) do
  redis.call('ZADD', index, fired, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (fired - retention))
  redis.call('ZREMRANGEBYRANK', index, 0, -(most + 1))
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'event', 'fired', 'json', ARGV[3])
local n = tonumber(ARGV[8])
local at = 9
for i = 7, #KEYS do
  local id = ARGV[at]
  local fields = {}
  for j = 1, n do
    fields[j] = ARGV[at + j]
  end
  redis.call('HSET', KEYS[i], unpack(fields))
  redis.call('PEXPIRE', KEYS[i], retention)
  redis.call('ZADD', KEYS[6], fired, id)
  at = at + n + 1
end
return {'fired'}
