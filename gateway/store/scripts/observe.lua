-- observe.lua: the one read-modify-write of a Submit before its verdict.
-- Claims the action_id (idempotency) and records the action in its session's recent
-- history, returning that history for detection; on a single node also reads (and
-- keeps alive) the session's pause.
--
-- KEYS[1] action claim   KEYS[2] recent action types   KEYS[3] recent fingerprints
-- KEYS[4] session pause (optional: on a cluster it is in another slot, read apart)
-- ARGV[1] claim ttl (ms)  ARGV[2] action_type  ARGV[3] fingerprint
-- ARGV[4] history length  ARGV[5] session idle timeout (ms)
-- ARGV[6] the claim: 'p|<request digest>|<claim token>'
--
-- The claim is 'p|<digest>|<token>' while a call decides the action (for the claim
-- ttl), then 'd|<digest>|' once it is decided (the decision itself is in the
-- {audit} slot's decided record). Returns:
--   {'seen'}       decided before, with the same request digest;
--   {'pending'}    another call holds the claim for the same request;
--   {'reused'}     the action_id was used for a request with another digest;
--   {'new', pause JSON or '', types newest first, fingerprints newest first}
--                  claimed now; or claimed by this very call before, when the client
--                  resent it after losing the reply (the history then already holds
--                  this action and is not pushed again).
-- A session's pause lives as long as the session is active: each action refreshes it.
local existing = redis.call('GET', KEYS[1])
local claim = ARGV[6]
local ttl = ARGV[5]
if existing ~= claim then
  if existing then
    if string.sub(existing, 3, 66) ~= string.sub(claim, 3, 66) then
      return {'reused'}
    end
    if string.sub(existing, 1, 1) == 'p' then
      return {'pending'}
    end
    return {'seen'}
  end
  redis.call('SET', KEYS[1], claim, 'PX', ARGV[1])
  local keep = tonumber(ARGV[4]) - 1
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, keep)
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, keep)
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
local pause = false
if KEYS[4] then
  pause = redis.call('GET', KEYS[4])
  if pause then
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
end
return {
  'new',
  pause or '',
  redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('LRANGE', KEYS[3], 0, -1),
}
