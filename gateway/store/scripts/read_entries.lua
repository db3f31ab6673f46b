-- read_entries.lua: audit entries by seq from the list, whose front the sealer trims.
--
-- KEYS[1] audit entries (list; its first element is entry trimmed + 1)
-- KEYS[2] the sealed log (hash: size, trimmed)
-- ARGV[1], ARGV[2] the first and last seq wanted (a range), or ARGV[1] = 'at' and
--          ARGV[2..] single seqs
-- Returns {trimmed, line, line, ...}: the lines of the seqs above `trimmed`, in
-- order (a range: from max(first, trimmed + 1); 'at': false for a seq at or below
-- trimmed or past the end). Read with `trimmed` in one step, so a trim between
-- two calls can never shift an index.
local trimmed = tonumber(redis.call('HGET', KEYS[2], 'trimmed') or '0')
local out = {tostring(trimmed)}
if ARGV[1] == 'at' then
  for i = 2, #ARGV do
    local seq = tonumber(ARGV[i])
    if seq > trimmed then
      out[#out + 1] = redis.call('LINDEX', KEYS[1], seq - 1 - trimmed) or false
    else
      out[#out + 1] = false
    end
  end
  return out
end
local first = math.max(tonumber(ARGV[1]), trimmed + 1)
local last = tonumber(ARGV[2])
if last >= first then
  local lines = redis.call('LRANGE', KEYS[1], first - 1 - trimmed, last - 1 - trimmed)
  for _, line in ipairs(lines) do
    out[#out + 1] = line
  end
end
return out
