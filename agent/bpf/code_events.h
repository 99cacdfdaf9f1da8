/* code.load records (agent/bpf/codeload.c). Op codes 9-11. */
#ifndef GPUAUDIT_CODE_EVENTS_H
#define GPUAUDIT_CODE_EVENTS_H

#endif /* GPUAUDIT_CODE_EVENTS_H */
