-- observe.lua: the one read-modify-write of a Submit before its verdict.
-- Claims the action_id (idempotency), reads the session's pause flag and records the
-- action in the session's recent history, returning that history for detection.
--
-- KEYS[1] action record   KEYS[2] session pause   KEYS[3] recent action types
-- KEYS[4] recent fingerprints
-- ARGV[1] claim ttl (ms)  ARGV[2] action_type  ARGV[3] fingerprint
-- ARGV[4] history length  ARGV[5] history ttl (ms)
--
-- Returns {'seen', record} when the action_id was submitted before (record is the
-- stored decision JSON, or 'pending' while another call is deciding it), else
-- {'new', pause JSON or '', types newest first, fingerprints newest first}.
local existing = redis.call('GET', KEYS[1])
if existing then
  return {'seen', existing}
end
redis.call('SET', KEYS[1], 'pending', 'PX', ARGV[1])
local keep = tonumber(ARGV[4]) - 1
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, keep)
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, keep)
redis.call('PEXPIRE', KEYS[4], ARGV[5])
return {
  'new',
  redis.call('GET', KEYS[2]) or '',
  redis.call('LRANGE', KEYS[3], 0, -1),
  redis.call('LRANGE', KEYS[4], 0, -1),
}
