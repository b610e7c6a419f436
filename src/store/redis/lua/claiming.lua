-- claiming: how a function claims runnable jobs (Store::claim), each the
-- runnable job first by priority (with aging) then by age: claim.lua claims
-- with it, and complete.lua for the workers that claim their next job in
-- the same call as their result.
-- Shared code (see prelude.lua): no KEYS or ARGV of its own; it only
-- defines functions.
--
-- 1. Apply what came due (retries, deadlines), so it counts before choosing.
-- 2. Page through the ready lists, picking the level whose head runs next.
-- 3. Claim each head that is runnable (Job::claim); expire one past its
--    queue deadline; drop a stale entry.
-- 4. Write the bookkeeping gathered on the way, once (flush).
-- 5. When a claim got no job, answer the next due time, so idle workers
--    wake when a retry comes due.

-- Claims up to `want` jobs with leases of `lease_ms`, under priority aging
-- `aging` (nil: strict priority), after applying at most `due_limit` due
-- items. Appends to `out` one list per claimed job: its fields as read,
-- followed by what the claim changed ('life' and its new value, then each
-- field it deleted with no value: false, a nil in the answer). Returns the
-- next due time (ms, as text) when a claim got no job and something is
-- due, else ''. Nothing may be gathered when it is called.
local function claim_ready(lease_ms, aging, due_limit, want, out)
  -- 1. Retries that came due (and deadlines that passed) count before
  -- choosing.
  apply_due(due_limit)
  local claimed = 0

  -- 2. Each level is read a page at a time, from the head (its oldest job).
  -- What this call takes out of the lists is only written at the end
  -- (flush), so until then a level's next jobs start at the offset of those
  -- it has passed.
  gather()
  local pages, passed = {{}, {}, {}}, {0, 0, 0}
  -- The level's head, {id = , at = when it became ready (read only when
  -- heads of two levels must be compared under aging)}, or nil when it is
  -- empty.
  local function head(level)
    local page = pages[level + 1]
    if page.pos == nil or page.pos > #page then
      if page.last then
        return nil
      end
      local from, size = passed[level + 1], math.max(want - claimed, 1)
      local ids = redis.call('ZRANGE', READY[level + 1], n2s(from), n2s(from + size - 1))
      -- A short page is the end of the list.
      page = {pos = 1, last = #ids < size}
      for i, id in ipairs(ids) do
        page[i] = {id = id}
      end
      pages[level + 1] = page
    end
    return page[page.pos]
  end
  local function pass(level)
    local page = pages[level + 1]
    page.pos = page.pos + 1
    passed[level + 1] = passed[level + 1] + 1
  end
  local function ready_at(h)
    if h.at == nil then
      local j = load(job_key(h.id), h.id)
      h.at = j and opt(j[I_READY_AT]) or 0
    end
    return h.at
  end

  -- The level whose head runs next: comparing heads by (effective level,
  -- time ready, level) finds the winner. Without aging the effective level
  -- is the level, and a lone head wins without comparing.
  local function pick()
    local best, best_eff, best_at = nil, nil, nil
    local levels = 0
    for level = 0, 2 do
      if head(level) then
        levels = levels + 1
        best = best or level
      end
    end
    if levels < 2 or not aging then
      return best
    end
    best = nil
    for level = 0, 2 do
      local h = head(level)
      if h then
        local at = ready_at(h)
        local eff = math.max(level - math.floor(math.max(NOW - at, 0) / math.max(aging, 1)), 0)
        if best == nil or eff < best_eff or (eff == best_eff and at < best_at) then
          best, best_eff, best_at = level, eff, at
        end
      end
    end
    return best
  end

  -- 3. Claim the heads in turn, until every claim has a job or the lists
  -- run out (bounded: a script blocks Redis while it runs).
  for _ = 1, 1000 + want do
    if claimed >= want then
      break
    end
    local level = pick()
    if level == nil then
      break
    end
    local id = head(level).id
    pass(level)
    local key = job_key(id)
    local flat = redis.call('HGETALL', key)
    local life = nil
    for i = 1, #flat, 2 do
      if flat[i] == 'life' then
        life = flat[i + 1]
        break
      end
    end
    if not life then
      -- A stale entry (the job is gone) would be met again: drop it.
      set_ready(level + 1, id, false)
    else
      local j = life_of(key, id, life)
      local b = snapshot(j)
      if expire_if_due(j) then
        -- A job past its deadline is expired here, never run.
        commit(j, b)
      elseif claim_job(j, lease_ms) then
        claimed = claimed + 1
        flat[#flat + 1] = 'life'
        flat[#flat + 1] = commit(j, b)
        if j.del then
          for f in pairs(j.del) do
            flat[#flat + 1] = f
            flat[#flat + 1] = false
          end
        end
        out[#out + 1] = flat
      else
        set_ready(level + 1, id, false)
      end
    end
  end
  -- 4. The bookkeeping, once.
  flush()
  -- 5. Idle workers wake when the next retry comes due.
  if claimed < want then
    local due = first_due()
    if due then
      return n2s(due)
    end
  end
  return ''
end
