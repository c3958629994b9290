-- Unbind an Idempotency-Key from the request it was bound to, if that request appended nothing.
-- KEYS[1] the key (keys.idempotency_key), KEYS[2] the request's stream hash (keys.stream_key)
-- ARGV[1] the request's digest, ARGV[2 ..] 'i:' .. each of its event ids (16 bytes)
-- Returns 1 if the key was deleted; 0 if it is bound to another request, or is gone, or if the
-- stream holds one of the events (an append of them may have landed, its answer lost).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
