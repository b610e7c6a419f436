-- cancel (Store::cancel and Store::cancel_queued): cancels a job that has
-- not ended (Job::cancel), if the caller may see it.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9]  the job
-- ARGV[3]  its id
-- ARGV[4]  '1' if the caller has an owner (else '0')
-- ARGV[5]  the caller's owner ('' for none)
-- ARGV[6]  '1' to cancel only a queued job (cancel_queued)
--
-- Returns {'canceled', field, value, ...} | {'terminal', ...} (it had
-- ended already) | {'not_queued', ...} (cancel_queued of a job that is
-- not queued) | {'not_found'} (no such job, forgotten, or not the
-- caller's).
--
-- 1. Find the job and check that the caller may see it (owners match).
-- 2. Cancel it, unless cancel_queued finds it not queued or it has ended.

-- 1. The job, as the caller may see it.
local j = load(KEYS[9], ARGV[3])
if not j or is_forgotten(j) then
  return {'not_found'}
end
local owner = redis.call('HGET', KEYS[9], 'owner')
local visible
if ARGV[4] == '1' then
  visible = owner == ARGV[5]
else
  visible = not owner
end
if not visible then
  return {'not_found'}
end
-- 2. Cancel it.
if ARGV[6] == '1' and j[I_STATUS] ~= S_QUEUED then
  return tagged('not_queued', KEYS[9])
end
local b = snapshot(j)
if not cancel_job(j) then
  return tagged('terminal', KEYS[9])
end
commit(j, b)
return tagged('canceled', KEYS[9])
