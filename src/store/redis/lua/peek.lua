-- peek (read only): KEYS[9] the job; ARGV[3] the revision the caller has seen.
-- -> {'gone'} | {'same'} | {'changed', fields...}
local j = load(KEYS[9], '')
if not j or is_forgotten(j) then
  return {'gone'}
end
if j.revision <= tonumber(ARGV[3]) then
  return {'same'}
end
return tagged('changed', KEYS[9])
