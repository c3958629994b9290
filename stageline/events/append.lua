-- Atomic appends of events to streams of one workspace and to its log, one after another.
-- KEYS[1] workspace log (Redis Stream, entry ids 0-<position>)
-- KEYS[1 + r] stream hash of request r: n = length, <version> = log position, i:<event id> = version
-- KEYS[R + 1 + j] the streams outboxes write to, j = 1.. (R = |ARGV[1]|, the number of requests)
-- ARGV[1] R, or -R when R recorded times follow in ARGV[2 .. R + 1], one per request: ms since
--   the epoch to record its events at, or '' for the server's TIME (as without them);
-- then per request in order: stream name, expected version (-2 any, -1 no stream,
--   >= 0 exact), event count k (-k: a whole request, see status 4), then k times: 'i:' .. event id (16 bytes), stored blob; then
--   its outbox: m entries to add (0 for none), [maxlen, m times: j, payload], and the j of a
--   stream to acknowledge an entry of (0 for none), [group, entry id].
-- Each request sees the ones before it. A request whose events are all new (status 1) also
-- writes its outbox: the entries (field __data__, the stream trimmed to maxlen of acknowledged
-- entries), then the acknowledgement. Returns one flat array, per request in order:
--   0, actual version: a version clash (nothing of that request written);
--   1, last version, first position: every event new (versions and positions run on by one);
--   2 (every event known) or 3 (some), version, then k times version, position in input order;
--   4, version, m, then m times i, v, p: a whole request some but not all of whose events are
--   known (nothing written); m are, each its i-th event (0-based) at version v, position p.
local log = KEYS[1]
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = ms
local out = {}
local o = 0
local R = tonumber(ARGV[1])
local a = 2
local timed = R < 0
if timed then
  R = -R
  a = R + 2
end
-- the log position of the entry this call added last: 0-* entries run on by one
local p = nil
local function add(stream, version, blob)
  local id = redis.call('XADD', log, '0-*', 's', stream, 'v', version, 't', ms, 'e', blob)
  if p then
    p = p + 1
  else
    p = tonumber(string.match(id, '-(%d+)$'))
  end
  return p
end
-- the outbox of the request whose arguments end before ARGV[at]; returns where the next begins
local function outbox(at, write)
  local m = tonumber(ARGV[at])
  local i = at + 1
  if m > 0 then
    local maxlen = ARGV[i]
    i = i + 1
    for _ = 1, m do
      if write then
        redis.call('XADD', KEYS[R + 1 + tonumber(ARGV[i])], 'MAXLEN', '=', maxlen, 'ACKED', '*',
                   '__data__', ARGV[i + 1])
      end
      i = i + 2
    end
  end
  local acked = tonumber(ARGV[i])
  if acked == 0 then return i + 1 end
  if write then redis.call('XACK', KEYS[R + 1 + acked], ARGV[i + 1], ARGV[i + 2]) end
  return i + 3
end
for r = 2, R + 1 do
  local key = KEYS[r]
  if timed then
    ms = ARGV[r]
    if ms == '' then ms = now end
  end
  local stream = ARGV[a]
  local expected = tonumber(ARGV[a + 1])
  local first = a + 3
  local k = tonumber(ARGV[a + 2])
  local whole = k < 0
  if whole then k = -k end
  local last = a + 1 + 2 * k
  local tail = last + 2
  a = outbox(tail, false)
  local got
  if expected == -1 and not redis.call('HGET', key, 'n') then
    -- a stream without events holds no event id either
    got = {false}
    for i = first, last, 2 do got[#got + 1] = false end
  elseif first == last then
    got = redis.call('HMGET', key, 'n', ARGV[first])
  else
    local fields = {'n'}
    for i = first, last, 2 do
      fields[#fields + 1] = ARGV[i]
    end
    got = redis.call('HMGET', key, unpack(fields))
  end
  local n = tonumber(got[1] or '0')
  local fresh = 0
  for j = 2, #got do
    if not got[j] then fresh = fresh + 1 end
  end
  if whole and fresh > 0 and fresh < k then
    out[o + 1] = 4
    out[o + 2] = n - 1
    out[o + 3] = k - fresh
    o = o + 3
    for j = 2, #got do
      if got[j] then
        out[o + 1] = j - 2
        out[o + 2] = tonumber(got[j])
        out[o + 3] = tonumber(redis.call('HGET', key, got[j]))
        o = o + 3
      end
    end
  elseif fresh > 0 and ((expected == -1 and n > 0) or (expected >= 0 and expected ~= n - 1)) then
    out[o + 1] = 0
    out[o + 2] = n - 1
    o = o + 2
  elseif fresh == #got - 1 then
    if first == last then
      redis.call('HSET', key, 'n', n + 1, n, add(stream, n, ARGV[first + 1]), ARGV[first], n)
      n = n + 1
    else
      local index = {'n', n + fresh}
      local x = 2
      for i = first, last, 2 do
        index[x + 1] = n
        index[x + 2] = add(stream, n, ARGV[i + 1])
        index[x + 3] = ARGV[i]
        index[x + 4] = n
        x = x + 4
        n = n + 1
      end
      redis.call('HSET', key, unpack(index))
    end
    outbox(tail, true)
    out[o + 1] = 1
    out[o + 2] = n - 1
    out[o + 3] = p - fresh + 1
    o = o + 3
  else
    local index = {'n', n + fresh}
    local x = 2
    local head = o + 2
    local highest = -1
    out[o + 1] = 2
    o = o + 2
    local j = 2
    for i = first, last, 2 do
      local v = got[j]
      j = j + 1
      if v then
        v = tonumber(v)
        out[o + 1] = v
        out[o + 2] = tonumber(redis.call('HGET', key, v))
        if v > highest then highest = v end
      else
        add(stream, n, ARGV[i + 1])
        index[x + 1] = n
        index[x + 2] = p
        index[x + 3] = ARGV[i]
        index[x + 4] = n
        x = x + 4
        out[o + 1] = n
        out[o + 2] = p
        n = n + 1
      end
      o = o + 2
    end
    if fresh > 0 then
      redis.call('HSET', key, unpack(index))
      out[head - 1] = 3
      out[head] = n - 1
    else
      -- a retry of an append that landed: answer with where its events are, not the head,
      -- so a caller that appends on from this version cannot skip a writer in between
      out[head] = highest
    end
  end
end
return out
