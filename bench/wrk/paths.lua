-- Cycles through the requests listed (one per line) in the file named by WRK_PATHS: a path
-- (a GET), or METHOD<tab>PATH[<tab>BODY] (a JSON body). WRK_AUTHORIZATION, when set, is sent as
-- the Authorization header. The requests are formatted once, before the run.
local requests = {}
local auth = os.getenv("WRK_AUTHORIZATION")
for line in io.lines(os.getenv("WRK_PATHS")) do
  local method, path, body = line:match("^(%u+)\t([^\t]+)\t?(.*)$")
  if not method then
    method, path, body = "GET", line, ""
  end
  local headers = {}
  if auth and auth ~= "" then
    headers["Authorization"] = auth
  end
  if body ~= "" then
    headers["Content-Type"] = "application/json"
  else
    body = nil
  end
  requests[#requests + 1] = wrk.format(method, path, headers, body)
end
local i = 0
request = function()
  i = (i % #requests) + 1
  return requests[i]
end

-- wrk's --latency stops at p99; print p99.9 (microseconds) for the harness.
done = function(summary, latency, requests)
  io.write(string.format("P999_US: %d\n", latency:percentile(99.9)))
end
