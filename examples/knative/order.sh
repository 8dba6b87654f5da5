#!/bin/sh
# A classic-mode CloudEvents consumer. The watchdog puts the event's data on stdin and its attributes in CE_*
# variables; whatever this prints becomes the data of a reply event (type "<type>.reply" unless ce_reply_type is
# set), and printing nothing acknowledges the event with 202 and no reply.
data=$(cat)

# Attribute values are free text: escape them so the reply stays valid JSON whatever a producer sends.
json_string() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n\r'
}

case "${CE_TYPE:-}" in
"")
    # Plain HTTP (no CloudEvent): say what we expect instead of failing, handy when testing with curl.
    printf '{"error":"expected a CloudEvent of type com.example.order.created"}\n'
    ;;
*.created)
    printf '{"status":"accepted","type":"%s","source":"%s","id":"%s","length":%d}\n' \
        "$(json_string "$CE_TYPE")" "$(json_string "${CE_SOURCE:-}")" "$(json_string "${CE_ID:-}")" "${#data}"
    ;;
*)
    # Not ours: no output means 202 and no reply event, so nothing is re-published to the broker.
    ;;
esac
