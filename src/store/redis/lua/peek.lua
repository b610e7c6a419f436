-- peek (read only): whether a job changed since the revision a long-poll
-- has seen (Store::wait).
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9]  the job
-- ARGV[3]  the revision the caller has seen
--
-- Returns {'gone'} (no such job, or forgotten) | {'same'} | {'changed',
-- field, value, ...}.

local j = load(KEYS[9], '')
if not j or is_forgotten(j) then
  return {'gone'}
end
if j[I_REVISION] <= tonumber(ARGV[3]) then
  return {'same'}
end
return tagged('changed', KEYS[9])
