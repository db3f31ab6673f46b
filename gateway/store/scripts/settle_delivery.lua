-- settle_delivery.lua: complete, reschedule or dead-letter a claimed delivery.
-- Rescheduling and dead-lettering apply only if the caller's lease is still the one
-- in the queue (else another worker took the delivery over after the lease ran out,
-- and what happens to it is that worker's to decide); completing always applies: the
-- alert was sent, whoever else may be sending it again.
--
-- KEYS[1] the due queue   KEYS[2] the delivery hash   KEYS[3] the dead-letter stream
-- ARGV[1] 'complete' | 'retry' | 'dead'   ARGV[2] delivery id   ARGV[3] the lease's end (ms)
-- retry: ARGV[4] due (ms)   ARGV[5] error   ARGV[6] hash TTL (ms)
-- dead:  ARGV[4] stream MAXLEN (approximate)   ARGV[5..] the stream entry's fields
-- Returns 1 when applied, 0 when the lease was lost.
if ARGV[1] == 'complete' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not score or tonumber(score) ~= tonumber(ARGV[3]) then
  return 0
end
if ARGV[1] == 'retry' then
  if redis.call('EXISTS', KEYS[2]) == 0 then  -- its TTL ran out: nothing to retry
    redis.call('ZREM', KEYS[1], ARGV[2])
    return 0
  end
  redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('HSET', KEYS[2], 'last_error', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  return 1
end
local entry = {}
for i = 5, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(entry))
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
