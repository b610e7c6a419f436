-- claim_batch: claims more runnable jobs of one batch key for a worker that
-- holds the head of a batch (Store::claim_batch), in the order claim takes
-- jobs (priority with aging, then age), within an item and a byte budget.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- ARGV[3]  the lease (ms)
-- ARGV[4]  the priority aging period (ms; '' for none)
-- ARGV[5]  the batch key
-- ARGV[6]  the most inputs the jobs may add up to
-- ARGV[7]  the most request-body bytes they may add up to
-- ARGV[8]  how many ready jobs of each level to look at, at most
--
-- Returns one list per claimed job: its fields as they are after the claim
-- (HGETALL).
--
-- 1. Read the head of each ready list, a bounded page, and keep the jobs
--    of this batch key, with their weight (inputs, body bytes).
-- 2. Order them as claim would (effective level, time ready, level, place).
-- 3. Claim each that fits what is left of the budget (Job::claim); expire
--    one past its queue deadline.
-- 4. Write the bookkeeping gathered on the way, once (flush).

local lease_ms = tonumber(ARGV[3])
local aging = tonumber(ARGV[4])
local want_key = ARGV[5]
local items_left = tonumber(ARGV[6])
local bytes_left = tonumber(ARGV[7])
local scan = tonumber(ARGV[8])

-- 1. The candidates.
local candidates = {}
for level = 0, 2 do
  local ids = redis.call('ZRANGE', READY[level + 1], '0', n2s(scan - 1))
  for pos, id in ipairs(ids) do
    local key = job_key(id)
    local f = redis.call('HMGET', key, 'batch_key', 'batch_items', 'life')
    if f[1] == want_key and f[3] then
      local j = life_of(key, id, f[3])
      local at = opt(j[I_READY_AT]) or 0
      local eff = level
      if aging then
        eff = math.max(level - math.floor(math.max(NOW - at, 0) / math.max(aging, 1)), 0)
      end
      candidates[#candidates + 1] = {
        j = j, eff = eff, at = at, level = level, pos = pos,
        items = tonumber(f[2]) or 1, bytes = redis.call('HSTRLEN', key, 'req_body'),
      }
    end
  end
end

-- 2. The order of claim.
table.sort(candidates, function(a, b)
  if a.eff ~= b.eff then return a.eff < b.eff end
  if a.at ~= b.at then return a.at < b.at end
  if a.level ~= b.level then return a.level < b.level end
  return a.pos < b.pos
end)

-- 3. Claim what fits.
gather()
local out = {}
for _, c in ipairs(candidates) do
  if items_left <= 0 then
    break
  end
  if c.items <= items_left and c.bytes <= bytes_left then
    local j = c.j
    local b = snapshot(j)
    if expire_if_due(j) then
      -- A job past its deadline is expired here, never run.
      commit(j, b)
    elseif claim_job(j, lease_ms) then
      commit(j, b)
      items_left = items_left - c.items
      bytes_left = bytes_left - c.bytes
      out[#out + 1] = redis.call('HGETALL', j.key)
    end
  end
end
-- 4. The bookkeeping, once.
flush()
return out
