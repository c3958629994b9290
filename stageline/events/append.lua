-- Atomic append of events to one stream and to its workspace log.
-- KEYS[1] stream hash: n = length, <version> = log position, i:<event id> = version
-- KEYS[2] workspace log (Redis Stream, entry ids 0-<position>)
-- ARGV[1] stream name, ARGV[2] expected version (-2 any, -1 no stream, >= 0 exact)
-- ARGV[3..] event id (16 bytes), stored blob, repeated
-- Returns {1, last version, recorded ms, v1, p1, v2, p2, ...} in input order,
-- or {0, actual version} on a version clash (nothing written).
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local expected = tonumber(ARGV[2])
local out = {1, 0, 0}
local fresh = 0
local known = {}
for i = 3, #ARGV, 2 do
  local v = redis.call('HGET', KEYS[1], 'i:' .. ARGV[i])
  if v then
    known[i] = tonumber(v)
  else
    fresh = fresh + 1
  end
end
if fresh > 0 then
  if (expected == -1 and n > 0) or (expected >= 0 and expected ~= n - 1) then
    return {0, n - 1}
  end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = {}
for i = 3, #ARGV, 2 do
  local v = known[i]
  if v then
    out[#out + 1] = v
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], tostring(v)))
  else
    local id = redis.call('XADD', KEYS[2], '0-*', 's', ARGV[1], 'v', n, 't', ms, 'e', ARGV[i + 1])
    local p = tonumber(string.match(id, '-(%d+)$'))
    fields[#fields + 1] = tostring(n)
    fields[#fields + 1] = p
    fields[#fields + 1] = 'i:' .. ARGV[i]
    fields[#fields + 1] = n
    out[#out + 1] = n
    out[#out + 1] = p
    n = n + 1
  end
end
if fresh > 0 then
  redis.call('HSET', KEYS[1], 'n', n, unpack(fields))
end
out[2] = n - 1
out[3] = ms
if fresh == 0 then
  -- a retry of an append that landed: answer with where its events are, not the head,
  -- so a caller that appends on from this version cannot skip a writer in between
  out[1] = 2
  local last = -1
  for i = 4, #out, 2 do
    if out[i] > last then last = out[i] end
  end
  out[2] = last
end
return out
