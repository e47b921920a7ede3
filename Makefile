# The two quick-start commands (see README.md):
#   make run    install what is missing, build, run tessera on the built-in default model
#   make test   install what is missing, build, run the whole test suite
.PHONY: run test build deps clean format

deps:
	@scripts/setup.sh

build: deps
	@cmake --preset default >/dev/null
	@cmake --build --preset default

run: build
	build/tessera serve --model default

test: build
	ctest --preset default

format:
	clang-format -i $$(git ls-files '*.cc' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf build
