# run-fuzzer.cmake: replays the regression inputs, then fuzzes for SECONDS from the seed corpus.
file(MAKE_DIRECTORY ${CORPUS})
file(GLOB seeds ${SEEDS}/*.json)
# Seeds of this fuzzer's own (fuzz/seeds/<name>: configuration files for fuzz_config, say).
if(EXTRA_SEEDS)
  file(GLOB extra ${EXTRA_SEEDS}/*)
  list(APPEND seeds ${extra})
endif()
foreach(s ${seeds})
  file(COPY ${s} DESTINATION ${CORPUS})
endforeach()
file(GLOB regressions ${REGRESSIONS}/*)
# The regressions seed the corpus too: the configuration fuzzer starts from INI text that names
# the keys (the JSON fixtures teach it nothing about them).
foreach(s ${regressions})
  file(COPY ${s} DESTINATION ${CORPUS})
endforeach()
if(regressions)
  execute_process(COMMAND ${FUZZER} ${regressions} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "a regression input fails again")
  endif()
endif()
execute_process(COMMAND ${FUZZER} -max_total_time=${SECONDS} -max_len=65536 -timeout=10
                        -rss_limit_mb=2048 -print_final_stats=1 ${CORPUS}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the fuzzer found a crash: keep the crash-* file as a regression")
endif()
