-- log_append.lua: append a batch of log records to their categories' streams, then
-- trim every stream named, by age and by size. With no records it only trims.
--
-- KEYS[i]  the stream of one category (all in the {logs} slot)
-- ARGV[1]  now, in ms (the gateway's clock)
-- ARGV[2i], ARGV[2i + 1]  KEYS[i]'s retention in ms and its most records
-- then, from ARGV[2 * #KEYS + 2], triples per record:
--   the index of its stream in KEYS, its timestamp in ms, its JSON
--
-- Each record gets an explicit id "<ms>-<seq>" from its own timestamp, so that the
-- gateway's clock (not Redis') dates it and an injected clock works; when that is
-- not after the stream's last id (the clock went back, or the same ms), it becomes
-- "<last ms>-<last seq + 1>", so ids always increase. Redis 6.2 has no "<ms>-*",
-- hence the last id is read with XINFO (it survives trimming, unlike the last entry).
-- Trimming is exact: XTRIM MINID <now - retention>, then XTRIM MAXLEN <most>.
-- Returns the ids given, in the order of the records.
local now = tonumber(ARGV[1])
local streams = #KEYS
local last_ms, last_seq = {}, {}

local function last_id(i)
  if last_ms[i] == nil then
    last_ms[i], last_seq[i] = -1, -1
    if redis.call('EXISTS', KEYS[i]) == 1 then
      local info = redis.call('XINFO', 'STREAM', KEYS[i])
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then
          local ms, seq = string.match(info[j + 1], '^(%d+)-(%d+)$')
          last_ms[i], last_seq[i] = tonumber(ms), tonumber(seq)
        end
      end
    end
  end
  return last_ms[i], last_seq[i]
end

local ids = {}
for r = 2 * streams + 2, #ARGV, 3 do
  local i = tonumber(ARGV[r])
  local ms = tonumber(ARGV[r + 1])
  local seq = 0
  local lms, lseq = last_id(i)
  if ms <= lms then
    ms, seq = lms, lseq + 1
  end
  local id = string.format('%d-%d', ms, seq)
  redis.call('XADD', KEYS[i], id, 'record', ARGV[r + 2])
  last_ms[i], last_seq[i] = ms, seq
  ids[#ids + 1] = id
end

for i = 1, streams do
  local retention = tonumber(ARGV[2 * i])
  local most = tonumber(ARGV[2 * i + 1])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('XTRIM', KEYS[i], 'MINID', string.format('%d', math.max(now - retention, 0)))
    redis.call('XTRIM', KEYS[i], 'MAXLEN', most)
  end
end
return ids
