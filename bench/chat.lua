-- wrk script: POST a ~1 KB chat/completions body, as an Azure OpenAI SDK does.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},'
        .. '{"role":"user","content":"Hello! Please tell me the history of the United States, '
        .. string.rep("from the first settlements to the present day, ", 18)
        .. 'in a few sentences."}],"max_tokens":16}'
