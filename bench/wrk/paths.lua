-- Cycles through the request paths listed (one per line) in the file named by WRK_PATHS.
local paths = {}
local file = os.getenv("WRK_PATHS")
for line in io.lines(file) do
  paths[#paths + 1] = line
end
local i = 0
request = function()
  i = (i % #paths) + 1
  return wrk.format("GET", paths[i])
end

-- wrk's --latency stops at p99; print p99.9 (microseconds) for the harness.
done = function(summary, latency, requests)
  io.write(string.format("P999_US: %d\n", latency:percentile(99.9)))
end
