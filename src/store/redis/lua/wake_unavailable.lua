-- wake_unavailable: makes runnable now every queued job waiting out a
-- backoff because the upstream was unavailable (Store::wake_unavailable),
-- oldest first, behind the work already ready.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
--
-- Returns {how many were woken}.
--
-- 1. Read the index {ns}:unavailable (only the jobs waiting, never a scan).
-- 2. End each one's backoff; commit() takes it out of the index, puts it in
--    its ready list and tells idle workers, once for the batch.

-- 1. The jobs waiting for the upstream, oldest first.
local ids = redis.call('ZRANGE', UNAVAILABLE, 0, -1)
local woken = 0
gather()
-- 2. Each one runnable now.
for _, id in ipairs(ids) do
  local j = load(job_key(id), id)
  if j and waits_for_upstream(j) then
    local b = snapshot(j)
    -- Like a backoff ending: not a change a client waits for, so the
    -- revision stays.
    j[I_RETRY_AT] = NONE
    commit(j, b)
    woken = woken + 1
  else
    -- A stale entry (the job is gone): nothing to wake.
    redis.call('ZREM', UNAVAILABLE, id)
  end
end
flush()
return {n2s(woken)}
