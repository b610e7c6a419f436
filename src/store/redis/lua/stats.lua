-- stats (read only): the queue's figures (Store::stats).
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
--
-- Returns {queued at level 0, at 1, at 2, retrying, in progress, oldest
-- queued job's created_at (ms) or ''}, each a number as text.

local out = {}
local oldest = nil
for level = 1, 3 do
  out[level] = n2s(redis.call('ZCARD', READY[level]))
  local head = redis.call('ZRANGE', READY[level], 0, 0)
  if head[1] then
    local j = load(job_key(head[1]), head[1])
    local at = j and opt(j[I_CREATED_AT])
    if at and (oldest == nil or at < oldest) then
      oldest = at
    end
  end
end
out[4] = redis.call('GET', N_RETRYING) or '0'
out[5] = redis.call('GET', N_IN_PROGRESS) or '0'
if oldest then
  out[6] = n2s(oldest)
else
  out[6] = ''
end
return out
