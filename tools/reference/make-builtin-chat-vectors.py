#!/usr/bin/env python3
"""What llama.cpp's built-in chat templates (`llama_chat_apply_template` with
a template name) render for a few conversations, into
testdata/templates/builtin-llama-cpp.json (see make-gemma3-reference.py for
installing llama-cpp-python 0.3.36).

    v/bin/python tools/reference/make-builtin-chat-vectors.py OUT.json
"""
import sys
import llama_cpp, ctypes, json
convs = {
 "user": [("user", "Hello!")],
 "system_user": [("system", "  You are terse. "), ("user", " What is 2+2?\n")],
 "multi": [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello, how can I help?"), ("user", "Tell me a joke.")],
 "two_systems": [("system", "A."), ("system", "B."), ("user", "x"), ("assistant", " y "), ("user", "z")],
}
out = {}
for name in ["chatml", "gemma", "llama3", "phi3", "zephyr"]:
    for cname, msgs in convs.items():
        arr = (llama_cpp.llama_chat_message * len(msgs))(*[llama_cpp.llama_chat_message(role=r.encode(), content=c.encode()) for r, c in msgs])
        for add_ass in (True, False):
            buf = ctypes.create_string_buffer(4096)
            n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(msgs), add_ass, buf, 4096)
            assert 0 < n < 4096, (name, n)
            out.setdefault(name, []).append({"messages": [{"role": r, "content": c} for r, c in msgs], "add_generation_prompt": add_ass, "text": buf.raw[:n].decode()})
json.dump({"source": "llama.cpp's llama_chat_apply_template with a built-in template name, through llama-cpp-python 0.3.36", "templates": out}, open(sys.argv[1], "w"), indent=1, ensure_ascii=False)

