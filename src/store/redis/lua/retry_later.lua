-- retry_later: KEYS[9] the job; ARGV[3] id, ARGV[4] token, ARGV[5] runnable
-- at (ms), ARGV[6] spend an attempt ('1'/'0'), ARGV[7] has response,
-- ARGV[8..10] response status, headers, body, ARGV[11] error code,
-- ARGV[12] error message.  (Job::requeue)
-- -> {'ok', fields...} | {'stale'}
local j = load(KEYS[9], ARGV[3])
if not j or not holds_lease(j, ARGV[4]) then
  return {'stale'}
end
local b = snapshot(j)
if ARGV[6] ~= '1' then
  put(j, 'attempts', math.max(j.attempts - 1, 0))
end
put_outcome(j, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
put(j, 'lease_token', nil)
put(j, 'lease_until', nil)
local at = tonumber(ARGV[5])
if at > NOW then
  put(j, 'retry_at', at)
else
  put(j, 'retry_at', nil)
end
touch(j, 'queued')
commit(j, b)
return tagged('ok', KEYS[9])
