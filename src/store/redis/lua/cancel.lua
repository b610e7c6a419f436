-- cancel and cancel_queued: KEYS[9] the job; ARGV[3] id, ARGV[4] has owner
-- ('1'/'0'), ARGV[5] owner, ARGV[6] '1' to cancel only a queued job.
-- -> {'canceled', fields...} | {'terminal', fields...} | {'not_queued', fields...}
--    | {'not_found'}
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
if ARGV[6] == '1' and j.status ~= 'queued' then
  return tagged('not_queued', KEYS[9])
end
local b = snapshot(j)
if not cancel_job(j) then
  return tagged('terminal', KEYS[9])
end
commit(j, b)
return tagged('canceled', KEYS[9])
