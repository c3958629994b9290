-- A stream's events in one round trip.
-- KEYS[1] stream hash, KEYS[2] workspace log
-- ARGV[1] first version, ARGV[2] count, ARGV[3] 1 = backwards
-- Returns {length, entry, entry, ...}; each entry is {id, {field, value, ...}}.
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local first = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local out = {n}
if n == 0 then return out end
local step, last = 1, n - 1
if ARGV[3] == '1' then
  step, last = -1, 0
  if first > n - 1 then first = n - 1 end
end
if first < 0 then return out end
local fields = {}
for v = first, last, step do
  if #fields >= count then break end
  fields[#fields + 1] = tostring(v)
end
if #fields == 0 then return out end
local positions = redis.call('HMGET', KEYS[1], unpack(fields))
for _, p in ipairs(positions) do
  local id = '0-' .. p
  local entry = redis.call('XRANGE', KEYS[2], id, id)
  out[#out + 1] = entry[1]
end
return out
