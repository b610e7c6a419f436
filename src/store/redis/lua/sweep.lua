-- sweep: ARGV[3] how many due items to apply at most.
-- -> {next due or ''}
local due = apply_due(tonumber(ARGV[3]))
if due then
  return {n2s(due)}
end
return {''}
