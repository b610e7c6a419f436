-- claim: ARGV[3] lease (ms), ARGV[4] priority aging period (ms, '' for none),
-- ARGV[5] how many due items to apply first.
-- -> {'claimed', fields...} | {'none', next due or ''}
local lease_ms = tonumber(ARGV[3])
local aging = tonumber(ARGV[4])
-- Retries that came due (and deadlines that passed) count before choosing.
apply_due(tonumber(ARGV[5]))
for _ = 1, 1000 do
  -- The head of each level is its oldest job, so comparing heads (effective
  -- level, then time ready) finds the winner.
  local best = nil
  for level = 0, 2 do
    local head = redis.call('ZRANGE', READY[level + 1], 0, 0)
    if head[1] then
      local ready_at = tonumber(redis.call('HGET', job_key(head[1]), 'ready_at')) or 0
      local aged = 0
      if aging then
        aged = math.floor(math.max(NOW - ready_at, 0) / math.max(aging, 1))
      end
      local c = {math.max(level - aged, 0), ready_at, level, head[1]}
      if best == nil or c[1] < best[1] or (c[1] == best[1] and (c[2] < best[2]
          or (c[2] == best[2] and c[3] < best[3]))) then
        best = c
      end
    end
  end
  if best == nil then
    break
  end
  local level, id = best[3], best[4]
  local key = job_key(id)
  local j = load(key, id)
  if not j then
    -- A stale entry (the job is gone) would be met again: drop it.
    redis.call('ZREM', READY[level + 1], id)
  else
    local b = snapshot(j)
    -- A job past its deadline is expired here, never run.
    if expire_if_due(j) then
      commit(j, b)
    elseif claim_job(j, lease_ms) then
      commit(j, b)
      return tagged('claimed', key)
    else
      redis.call('ZREM', READY[level + 1], id)
    end
  end
end
local due = first_due()
if due then
  return {'none', n2s(due)}
end
return {'none', ''}
