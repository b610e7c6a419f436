-- complete: KEYS[9] the job; ARGV[3] id, ARGV[4] token, ARGV[5] final status,
-- ARGV[6] has response ('1'/'0'), ARGV[7..9] response status, headers, body,
-- ARGV[10] error code ('' for none), ARGV[11] error message.
-- -> {'ok', fields...} | {'stale'}
local j = load(KEYS[9], ARGV[3])
if not j or not holds_lease(j, ARGV[4]) then
  return {'stale'}
end
local b = snapshot(j)
put_outcome(j, ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
finish_as(j, ARGV[5])
commit(j, b)
return tagged('ok', KEYS[9])
